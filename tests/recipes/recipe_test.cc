// Recipes: protobuf text parsed with one clear error (file:line:col) for unknown or ill-typed
// fields, the documented defaults, --set overrides by field path, validation that names the file
// and the field, and the two shipped paper-scale recipes (research/bvllm.md §5.2, §5.3).
#include "recipes/recipe.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "tests/support/messages.h"

namespace bvllm::recipes {
namespace {

using testing::has;

using testing::error_of;

// Whether `text` contains `part`, printing both when it does not.
// A small valid recipe; the model and data paths are checked only with check_files.
constexpr const char* kGood = R"pb(
  name: "tiny"
  model {
    llm { vocab_size: 64 hidden_size: 32 intermediate_size: 64 num_layers: 2 num_heads: 4 num_kv_heads: 2 }
    tokenizer: "tok.json"
  }
  lora { rank: 8 alpha: 16 dropout: 0.1 target_regex: "(q|v)_proj$" }
  optimizer { lr: 1e-3 }
  schedule { kind: COSINE warmup_steps: 2 }
  batch { micro_batch: 2 grad_accum: 4 global_batch: 16 }
  data { shards: "shards" stage: 1 }
  steps: 10
)pb";

const ValidateOptions kNoFiles{.world = 2, .check_files = false};

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(Recipe, ParsesAndFillsDefaults) {
  const Recipe r = parse_recipe(kGood, "good.pb");
  EXPECT_EQ(r.name(), "tiny");
  EXPECT_EQ(r.model().llm().num_layers(), 2);
  EXPECT_EQ(r.schedule().kind(), COSINE);
  EXPECT_EQ(r.schedule().warmup_steps(), 2);
  EXPECT_EQ(r.steps(), 10);
  // Defaults documented in recipe.proto: torch AdamW betas/eps, clip 1.0 (HF Trainer), seed 42,
  // 16 temporal and 32 spatial queries as the released code, Qwen2's rope theta.
  EXPECT_DOUBLE_EQ(r.optimizer().beta1(), 0.9);
  EXPECT_DOUBLE_EQ(r.optimizer().beta2(), 0.999);
  EXPECT_DOUBLE_EQ(r.optimizer().eps(), 1e-8);
  EXPECT_DOUBLE_EQ(r.optimizer().clip_grad_norm(), 1.0);
  EXPECT_EQ(r.seed(), 42u);
  EXPECT_EQ(r.model().temporal_queries(), 16);
  EXPECT_EQ(r.model().spatial_queries(), 32);
  EXPECT_DOUBLE_EQ(r.model().llm().rope_theta(), 1e6);
  EXPECT_EQ(r.parallel().tp(), 1);
  EXPECT_NO_THROW(validate(r, "good.pb", kNoFiles));
}

TEST(Recipe, ExplicitZeroOverridesANonZeroDefault) {
  const Recipe r = parse_recipe("optimizer { lr: 1e-3 clip_grad_norm: 0 } seed: 0", "zero.pb");
  EXPECT_EQ(r.optimizer().clip_grad_norm(), 0.0);
  EXPECT_EQ(r.seed(), 0u);
  EXPECT_DOUBLE_EQ(r.optimizer().beta1(), 0.9);  // the fields it leaves out keep their defaults
}

TEST(Recipe, AFieldGivenTwiceIsAnError) {
  EXPECT_TRUE(has(error_of([] { parse_recipe("steps: 1\nsteps: 2\n", "twice.pb"); }), "twice.pb:2:"));
  EXPECT_TRUE(has(error_of([] { parse_recipe(std::string(kGood) + "optimizer { eps: 1 }", "twice.pb"); }),
                  "\"optimizer\" is specified multiple times"));
}

TEST(Recipe, LoadsFromFileAndRoundTripsThroughText) {
  const std::string path = write_temp("recipe_roundtrip.pb", kGood);
  const Recipe r = load_recipe(path, {"steps=3"});
  const Recipe again = parse_recipe(recipe_to_text(r), "printed");
  EXPECT_EQ(again.SerializeAsString(), r.SerializeAsString());
  EXPECT_TRUE(has(recipe_to_text(r), "steps: 3"));
  EXPECT_TRUE(has(error_of([] { load_recipe("/nonexistent/recipe.pb"); }), "/nonexistent/recipe.pb: cannot open"));
}

TEST(Recipe, ShippedPaperRecipes) {
  const std::string dir = std::string(BVLLM_SOURCE_DIR) + "/recipes/";
  const Recipe s1 = load_recipe(dir + "stage1.pb");
  const Recipe s2 = load_recipe(dir + "stage2.pb");
  // research/bvllm.md §5.2: lr 1e-3 cosine, warmup 0.03, 2 x 8 x 8 GPUs = 128, 16 frames.
  EXPECT_DOUBLE_EQ(s1.optimizer().lr(), 1e-3);
  EXPECT_EQ(s1.schedule().kind(), COSINE);
  EXPECT_DOUBLE_EQ(s1.schedule().warmup_ratio(), 0.03);
  EXPECT_EQ(s1.batch().global_batch(), 128);
  EXPECT_EQ(s1.model().frames_per_sample(), 16);
  EXPECT_EQ(s1.lora().rank(), 0);
  EXPECT_EQ(s1.data().stage(), 1);
  // §5.3: lr 1e-4, LoRA r128 alpha 256 dropout 0.05, 1 x 8 x 8 = 64, 32 frames, 8192 tokens.
  EXPECT_DOUBLE_EQ(s2.optimizer().lr(), 1e-4);
  EXPECT_EQ(s2.lora().rank(), 128);
  EXPECT_DOUBLE_EQ(s2.lora().alpha(), 256);
  EXPECT_DOUBLE_EQ(s2.lora().dropout(), 0.05);
  EXPECT_EQ(s2.batch().global_batch(), 64);
  EXPECT_EQ(s2.model().frames_per_sample(), 32);
  EXPECT_EQ(s2.data().max_length(), 8192);
  EXPECT_EQ(s2.data().stage(), 2);
  EXPECT_FALSE(s2.checkpoint().init_from().empty());
  for (const Recipe* r : {&s1, &s2}) {
    EXPECT_EQ(r->parallel().zero_stage(), 2);
    EXPECT_EQ(r->precision().compute(), BF16);
    EXPECT_DOUBLE_EQ(r->epochs(), 1);
    // Valid on 8 ranks (the paper's 8 GPUs); the placeholder paths need not exist.
    EXPECT_NO_THROW(validate(*r, "shipped", {.world = 8, .check_files = false}));
  }
  // The LoRA target matches every LLM linear but lm_head.
  const std::regex target(s2.lora().target_regex());
  for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    EXPECT_TRUE(std::regex_search(std::string("llm.layers.3.mlp.") + name, target)) << name;
  EXPECT_FALSE(std::regex_search(std::string("llm.lm_head"), target));
}

TEST(Recipe, UnknownFieldGivesOneErrorWithTheLine) {
  const std::string text = "name: \"x\"\noptimizer {\n  lr: 1e-3\n  learning_rate: 2\n}\n";
  const std::string message = error_of([&] { parse_recipe(text, "bad.pb"); });
  EXPECT_TRUE(has(message, "bad.pb:4:"));
  EXPECT_TRUE(has(message, "learning_rate"));
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;  // one line
}

TEST(Recipe, WrongTypeGivesAnErrorWithTheLine) {
  EXPECT_TRUE(
      has(error_of([] { parse_recipe("steps: 10\nbatch { micro_batch: \"two\" }\n", "bad.pb"); }), "bad.pb:2:"));
  EXPECT_TRUE(has(error_of([] { parse_recipe("steps: 1\nschedule { kind: SQUARE }\n", "bad.pb"); }), "bad.pb:2:"));
  EXPECT_TRUE(has(error_of([] { parse_recipe("\n\nsteps: 1.5\n", "bad.pb"); }), "bad.pb:3:"));
}

TEST(Recipe, OverridesNestedEnumBoolFloatStringAndOneof) {
  const Recipe r = parse_recipe(kGood, "good.pb",
                                {"optimizer.lr=2e-4", "schedule.kind=LINEAR", "data.image_pad=true",
                                 "lora.dropout=0.25", "model.llm.num_layers=3", "parallel.zero_stage=2", "seed=7",
                                 "data.shards=/elsewhere", "epochs=2", "model.llm_dir=/m"});
  EXPECT_DOUBLE_EQ(r.optimizer().lr(), 2e-4);
  EXPECT_EQ(r.schedule().kind(), LINEAR);
  EXPECT_TRUE(r.data().image_pad());
  EXPECT_DOUBLE_EQ(r.lora().dropout(), 0.25);
  EXPECT_EQ(r.parallel().zero_stage(), 2);
  EXPECT_EQ(r.seed(), 7u);
  EXPECT_EQ(r.data().shards(), "/elsewhere");
  EXPECT_TRUE(r.has_epochs());  // the oneof switched from steps
  EXPECT_FALSE(r.has_steps());
  EXPECT_EQ(r.model().llm_dir(), "/m");  // and from the inline sizes, set just before
  EXPECT_FALSE(r.model().has_llm());
}

TEST(Recipe, OverrideReplacesARepeatedFieldWithAList) {
  const Recipe r = parse_recipe(std::string(kGood) + "trainable { unfreeze: \"old\" }", "good.pb",
                                {"trainable.unfreeze=vlm_att_*,llm.norm"});
  ASSERT_EQ(r.trainable().unfreeze_size(), 2);
  EXPECT_EQ(r.trainable().unfreeze(0), "vlm_att_*");
  EXPECT_EQ(r.trainable().unfreeze(1), "llm.norm");
  EXPECT_EQ(parse_recipe(kGood, "good.pb", {"trainable.unfreeze="}).trainable().unfreeze_size(), 0);
}

TEST(Recipe, BadOverridesNameTheOverrideAndTheField) {
  auto bad = [](const std::string& o) { return error_of([&] { parse_recipe(kGood, "good.pb", {o}); }); };
  const std::string unknown = bad("optimizer.learning_rate=1");
  EXPECT_TRUE(has(unknown, "good.pb: --set optimizer.learning_rate=1: no field \"learning_rate\""));
  EXPECT_TRUE(has(unknown, "bvllm.recipes.Optimizer (fields: lr, beta1"));
  EXPECT_TRUE(has(bad("optimizer.lr=fast"), "bvllm.recipes.Optimizer.lr"));
  EXPECT_TRUE(has(bad("optimizer.lr=1e-3x"), "not a valid number"));
  EXPECT_TRUE(has(bad("steps=1.5"), "bvllm.recipes.Recipe.steps"));
  EXPECT_TRUE(has(bad("schedule.kind=SQUARE"), "(values: CONSTANT, LINEAR, COSINE)"));
  EXPECT_TRUE(has(bad("data.image_pad=yes"), "not a bool"));
  EXPECT_TRUE(has(bad("optimizer=1"), "is a message"));
  EXPECT_TRUE(has(bad("steps.x=1"), "is not a message"));
  EXPECT_TRUE(has(bad("steps"), "expected FIELD.PATH=VALUE"));
}

TEST(Recipe, ValidationNamesTheFileAndTheField) {
  auto invalid = [](const std::vector<std::string>& o, ValidateOptions options = kNoFiles) {
    return error_of([&] { validate(parse_recipe(kGood, "good.pb", o), "good.pb", options); });
  };
  // 16 != 2 x 4 x (4 ranks / 1) = 32.
  EXPECT_TRUE(has(invalid({}, {.world = 4, .check_files = false}),
                  "good.pb: batch.global_batch: 16 != micro_batch 2 x grad_accum 4 x data-parallel ranks 4"));
  EXPECT_TRUE(has(invalid({"parallel.tp=2", "batch.global_batch=8"}), "no error"));  // dp = 1
  EXPECT_TRUE(has(invalid({"parallel.tp=4"}), "parallel.tp: tp 4 x pp 1 does not divide the world of 2"));
  EXPECT_TRUE(has(invalid({"optimizer.lr=0"}), "good.pb: optimizer.lr: must be > 0"));
  EXPECT_TRUE(has(invalid({"optimizer.lr=nan"}), "optimizer.lr"));
  EXPECT_TRUE(has(invalid({"steps=0"}), "good.pb: steps: must be > 0"));
  EXPECT_TRUE(has(invalid({"lora.alpha=0"}), "lora.alpha"));
  EXPECT_TRUE(has(invalid({"lora.rank=-1"}), "lora.rank"));
  EXPECT_TRUE(has(invalid({"lora.target_regex=(q"}), "lora.target_regex"));
  EXPECT_TRUE(has(invalid({"lora.rank=0", "lora.target_regex=(q"}), "no error"));  // LoRA off
  EXPECT_TRUE(has(invalid({"model.llm.num_kv_heads=3"}), "model.llm.num_kv_heads"));
  EXPECT_TRUE(has(invalid({"parallel.zero_stage=3"}), "parallel.zero_stage"));
  EXPECT_TRUE(has(invalid({"parallel.bucket_elements=0"}), "parallel.bucket_elements"));
  EXPECT_TRUE(has(invalid({"data.stage=3"}), "data.stage"));
  EXPECT_TRUE(has(invalid({"schedule.warmup_steps=11"}), "schedule.warmup_steps"));
  EXPECT_TRUE(has(error_of([] { validate(parse_recipe("optimizer { lr: 1 }", "n.pb"), "n.pb", kNoFiles); }),
                  "n.pb: steps: set steps or epochs"));
  // With check_files, a missing data directory is named.
  EXPECT_TRUE(has(
      invalid({"model.tokenizer=" + std::string(BVLLM_SOURCE_DIR) + "/README.md", "data.shards=/nonexistent/shards"},
              {.world = 2, .check_files = true}),
      "good.pb: data.shards: \"/nonexistent/shards\" does not exist"));
}

}  // namespace
}  // namespace bvllm::recipes
