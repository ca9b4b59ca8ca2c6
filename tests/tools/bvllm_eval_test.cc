// bvllm_eval and load_trained_model (tools/train/inference.h) on checkpoints of a tiny B-VLLM: one
// that bvllm_train's trainer trains here for a few dozen steps on shards this test writes (videos
// of a coloured square moving left or right, questions about its colour and its direction), and
// one of random weights saved in the trainer's layout. Checked: the loaded model holds every saved
// tensor (LoRA adapters included) and malformed checkpoints are refused naming the file; the
// teacher-forced verdict equals real greedy generation's on every sample of both models (the
// equivalence bvllm_eval relies on); bvllm_eval's per-sample verdicts, per-type counts, chance
// levels, --limit, --batch and errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/tiny_vocab.h"
#include "layers/generate.h"
#include "parallel/checkpoint.h"
#include "recipes/recipe.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"
#include "tests/support/moving_squares.h"
#include "tools/train/inference.h"
#include "tools/train/model_builder.h"
#include "tools/train/trainer.h"

namespace bvllm::train {
namespace {

using testing::has;

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kEval = std::string(BVLLM_BINARY_DIR) + "/bin/bvllm_eval";

constexpr int kSamples = 12;

using testing::asks_colour;
std::string question_of(int i) { return testing::square_question(i); }
std::string answer_of(int i) { return testing::square_answer(i); }
data::Sample make_sample(int i) { return testing::square_sample(i, 2); }

// The manifest bvllm_synth writes for held-out videos: records with "type" and "answer".
json manifest_record(int i) {
  return {{"id", "v" + std::to_string(i)},
          {"video", "videos/v" + std::to_string(i) + ".mp4"},
          {"conversations",
           {{{"from", "human"}, {"value", "<video>\n" + question_of(i)}}, {{"from", "gpt"}, {"value", answer_of(i)}}}},
          {"type", asks_colour(i) ? "colour" : "motion"},
          {"answer", answer_of(i)}};
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Shards, tokenizers and a random checkpoint, once for the suite; the trained run on first use.
class EvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("bvllm_eval_test_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    {
      data::ShardWriter writer((*root_ / "shards").string());
      for (int i = 0; i < kSamples; ++i) writer.add(make_sample(i));
      writer.finish();
    }
    std::vector<std::string> texts = {std::string(kQwen2DefaultSystemPrompt), "system", "user", "assistant"};
    json manifest = json::array();
    for (int i = 0; i < kSamples; ++i) {
      texts.push_back(question_of(i));
      texts.push_back(answer_of(i));
      manifest.push_back(manifest_record(i));
    }
    data::write_tiny_tokenizer((*root_ / "tokenizer.json").string(), texts);
    data::write_tiny_bert_vocab((*root_ / "vocab.txt").string(), texts);
    std::ofstream(*root_ / "test.json") << manifest.dump(1);

    // Random weights in the trainer's layout: model tensors and the resolved recipe.
    const recipes::Recipe recipe = recipes::parse_recipe(recipe_text(), "bvllm_eval_test recipe");
    const Tokenizers tokenizers = load_tokenizers(recipe, "bvllm_eval_test recipe");
    BuiltModel random = build_model(recipe, "bvllm_eval_test recipe", tokenizers.bert.vocab_size());
    parallel::Checkpoint c;
    c.tensors["model"] = random.model->named_parameters();
    c.texts["recipe.pb"] = recipes::recipe_to_text(recipe);
    c.texts["trainer.json"] = "{}";
    parallel::save_checkpoint((*root_ / "random").string(), c);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  // The trained run (RUN_DIR), made on first use (ctest runs each test in its own process): 60 steps
  // over the 12 samples (20 epochs), every LLM weight, both Q-Formers and LoRA trained. That teaches
  // the tiny model the answers' prior (the likeliest answer to each question: some right, some
  // wrong), not yet to see the colours; enough for these tests.
  static std::string trained_run() {
    const fs::path run = *root_ / "run";
    if (fs::exists(run / "checkpoints" / "latest")) return run.string();
    std::ofstream(*root_ / "recipe.pb") << recipe_text();
    TrainOptions options;
    options.recipe = (*root_ / "recipe.pb").string();
    options.run_dir = run.string();
    std::ostringstream console;
    options.console = &console;
    const TrainResult trained = train(options);
    EXPECT_EQ(trained.step, 60) << console.str();
    return run.string();
  }

  static std::string recipe_text() {
    std::ostringstream r;
    r << "name: \"bvllm_eval_test\"\n"
      << "model {\n"
      << "  llm { vocab_size: 448 hidden_size: 64 intermediate_size: 128 num_layers: 2 num_heads: 4 num_kv_heads: 2 "
         "tie_word_embeddings: true }\n"
      << "  tokenizer: \"" << (*root_ / "tokenizer.json").string() << "\"\n"
      << "  vision { image_size: 32 patch_size: 8 width: 24 depth: 1 num_heads: 4 }\n"
      << "  qformer { hidden_size: 32 num_layers: 2 num_heads: 4 intermediate_size: 48 cross_attention_freq: 1 "
         "bert_vocab: \""
      << (*root_ / "vocab.txt").string() << "\" }\n"
      << "  temporal_queries: 2 spatial_queries: 3 frames_per_sample: 4 chronological_order: true\n"
      << "}\n"
      << "trainable { unfreeze: \"model.vlm_att_*\" unfreeze: \"model.layers.*\" unfreeze: \"model.embed_tokens.*\" }\n"
      << "lora { rank: 4 alpha: 8 dropout: 0 target_regex: \"(q|v|up)_proj$\" }\n"
      << "optimizer { lr: 5e-3 weight_decay: 0 }\n"
      << "schedule { kind: CONSTANT warmup_steps: 2 }\n"
      << "batch { micro_batch: 4 grad_accum: 1 global_batch: 4 }\n"
      << "precision { compute: F32 }\n"
      << "data { shards: \"" << (*root_ / "shards").string() << "\" stage: 2 max_length: 128 image_pad: true }\n"
      << "checkpoint { every_steps: 30 }\n"
      << "logging { every_steps: 20 }\n"
      << "seed: 3\n"
      << "steps: 60\n";
    return r.str();
  }

  // Runs bvllm_eval with `args`; returns its exit status, stdout and stderr in `out`.
  static int eval(const std::string& args, std::string* out) {
    const fs::path log = *root_ / "eval.log";
    const std::string command = kEval + " --threads=1 " + args + " > " + log.string() + " 2>&1";
    const int status = std::system(command.c_str());
    *out = read_file(log);
    return status;
  }

  static fs::path* root_;
};
fs::path* EvalTest::root_ = nullptr;

TEST_F(EvalTest, LoadTrainedModelHoldsEveryTensorOfTheCheckpoint) {
  const fs::path run = trained_run();
  const std::string latest = parallel::latest_checkpoint((run / "checkpoints").string()).value();
  const parallel::Checkpoint saved = parallel::load_checkpoint(latest);
  const NamedTensors& tensors = saved.tensors.at("model");
  // A run directory, its checkpoints/ and the step directory are the same checkpoint.
  for (const std::string& path : {run.string(), (run / "checkpoints").string(), latest}) {
    const LoadedModel m = load_trained_model(path);
    EXPECT_EQ(m.checkpoint, latest);
    EXPECT_EQ(m.step, 60);
    EXPECT_EQ(m.recipe.name(), "bvllm_eval_test");
    EXPECT_FALSE(m.model->is_training());
    const NamedTensors params = m.model->named_parameters();
    ASSERT_EQ(params.size(), tensors.size());
    int64_t lora = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].first, tensors[i].first);
      ASSERT_EQ(params[i].second.shape(), tensors[i].second.shape()) << params[i].first;
      EXPECT_EQ(testing::rel_error(params[i].second, tensors[i].second), 0.0) << params[i].first;
      EXPECT_FALSE(params[i].second.requires_grad());
      lora += params[i].first.find(".lora_") != std::string::npos ? 1 : 0;
    }
    EXPECT_EQ(lora, 2 * 3 * 2);  // A and B on q, v and up of 2 layers
  }
  // The weights are the trained ones, not a fresh init.
  const LoadedModel trained = load_trained_model(run.string()),
                    random = load_trained_model((*root_ / "random").string());
  EXPECT_GT(testing::rel_error(trained.model->named_parameters()[0].second, random.model->named_parameters()[0].second),
            1e-3);
}

TEST_F(EvalTest, MalformedCheckpointsAreRefusedNamingTheFile) {
  const parallel::Checkpoint good = parallel::load_checkpoint((*root_ / "random").string());
  auto save_variant = [&](const std::string& name, const std::function<void(parallel::Checkpoint&)>& change) {
    parallel::Checkpoint c = good;
    change(c);
    return parallel::save_checkpoint((*root_ / name).string(), c);
  };
  // A parameter missing from model.safetensors.
  const std::string missing = save_variant("missing", [](parallel::Checkpoint& c) {
    NamedTensors& t = c.tensors["model"];
    t.erase(t.begin() + 3);
  });
  std::string error = testing::error_of([&] { load_trained_model(missing); });
  EXPECT_TRUE(has(error, missing + "/model.safetensors"));
  EXPECT_TRUE(has(error, good.tensors.at("model")[3].first));
  // A tensor the model lacks (another LoRA target, another model).
  const std::string extra = save_variant("extra", [](parallel::Checkpoint& c) {
    c.tensors["model"].emplace_back("model.layers.0.mlp.down_proj.lora_A.weight", ops::zeros({4, 64}));
  });
  error = testing::error_of([&] { load_trained_model(extra); });
  EXPECT_TRUE(has(error, extra + "/model.safetensors"));
  EXPECT_TRUE(has(error, "model.layers.0.mlp.down_proj.lora_A.weight"));
  // No recipe.pb, no model tensors, nothing there.
  const std::string no_recipe = save_variant("no_recipe", [](parallel::Checkpoint& c) { c.texts.erase("recipe.pb"); });
  EXPECT_TRUE(has(testing::error_of([&] { load_trained_model(no_recipe); }), no_recipe + "/recipe.pb: missing"));
  const std::string no_model = save_variant("no_model", [](parallel::Checkpoint& c) { c.tensors.erase("model"); });
  EXPECT_TRUE(has(testing::error_of([&] { load_trained_model(no_model); }), no_model + "/model.safetensors: missing"));
  EXPECT_TRUE(has(testing::error_of([&] { load_trained_model((*root_ / "nowhere").string()); }), "no checkpoint"));
  // A recipe whose tokenizer does not fit the model's vocabulary.
  const std::string small = save_variant("small_vocab", [](parallel::Checkpoint& c) {
    std::string& text = c.texts["recipe.pb"];
    text.replace(text.find("vocab_size: 448"), 15, "vocab_size: 100");
  });
  EXPECT_TRUE(has(testing::error_of([&] { load_trained_model(small); }), "do not fit the LLM's vocabulary of 100"));
}

// The equivalence bvllm_eval rests on: check_answer's verdict from one forward pass is the verdict
// of greedy generation from the prompt, and where they go wrong they go wrong at the same token.
TEST_F(EvalTest, TeacherForcedVerdictEqualsGreedyGeneration) {
  int correct = 0, wrong = 0;
  trained_run();
  for (const std::string checkpoint : {"run", "random"}) {
    const LoadedModel m = load_trained_model((*root_ / checkpoint).string());
    data::LoaderOptions lo = loader_options(m.recipe);
    lo.prefetch_threads = 0;
    const data::DataLoader loader(lo, m.tokenizers.qwen, m.tokenizers.bert);
    const std::vector<int64_t> end = end_token_ids(m.tokenizers.qwen);
    NoGradGuard no_grad;
    for (int64_t i = 0; i < kSamples; ++i) {
      const data::LoadedSample loaded = loader.load(i);
      const layers::BvllmSample sample = model_sample(loaded);
      const layers::BvllmOutput out = m.model->forward({sample}, {.noise_free = true});
      const AnswerCheck check = check_answer(out.logits.select(0, 0), out.labels.select(0, 0), end);
      ASSERT_GT(check.expected.size(), 1u);
      EXPECT_EQ(check.expected.back(), end.front());  // the answer ends with <|im_end|>

      // Greedy generation from the ids before the answer (the visual tokens come before it).
      const int64_t visual = out.visual[0].tokens;
      const int64_t prompt_ids = check.answer_start - visual + 1;  // the placeholder is one id
      layers::BvllmSample prompt = sample;
      prompt.ids = loaded.ids.narrow(0, 0, prompt_ids).contiguous();
      prompt.labels = Tensor();
      layers::KVCache cache(m.model->config());
      const layers::BvllmInput input = m.model->input_embeds(prompt, {.noise_free = true});
      ASSERT_EQ(input.embeds.size(0), check.answer_start);
      const layers::GenerationResult generated = layers::generate_from_embeds(
          *m.model, cache, input.embeds,
          {.max_new_tokens = static_cast<int64_t>(check.expected.size()), .eos_token_ids = end});
      const bool generation_correct = generated.tokens == check.expected;
      EXPECT_EQ(check.correct, generation_correct) << checkpoint << " sample " << i;
      if (!check.correct) {
        const auto w = static_cast<size_t>(check.first_wrong);
        ASSERT_GT(generated.tokens.size(), w) << checkpoint << " sample " << i;
        EXPECT_EQ(std::vector<int64_t>(generated.tokens.begin(), generated.tokens.begin() + w),
                  std::vector<int64_t>(check.expected.begin(), check.expected.begin() + w));
        EXPECT_EQ(generated.tokens[w], check.predicted[w]) << checkpoint << " sample " << i;
      }
      (check.correct ? correct : wrong) += 1;
    }
  }
  // Both verdicts occur, or the comparison would prove little: the trained model answers some of
  // its training questions (those whose answer is the likeliest for the question), the random one
  // none.
  EXPECT_GE(correct, 2);
  EXPECT_GE(wrong, kSamples);
}

TEST_F(EvalTest, ReportsAccuracyPerQuestionType) {
  const fs::path out = *root_ / "eval" / "trained.json";
  std::string log;
  ASSERT_EQ(eval("--checkpoint=" + trained_run() + " --shards=" + (*root_ / "shards").string() +
                     " --manifest=" + (*root_ / "test.json").string() + " --out=" + out.string() + " --batch=5",
                 &log),
            0)
      << log;
  const json result = json::parse(read_file(out));
  ASSERT_EQ(result["samples"], kSamples);
  ASSERT_EQ(result["predictions"].size(), static_cast<size_t>(kSamples));

  // Each sample's verdict, recomputed here one sample at a time with the library.
  const LoadedModel m = load_trained_model((*root_ / "run").string());
  data::LoaderOptions lo = loader_options(m.recipe);
  lo.prefetch_threads = 0;
  const data::DataLoader loader(lo, m.tokenizers.qwen, m.tokenizers.bert);
  std::map<std::string, std::pair<int, int>> per_type;  // type -> (n, correct)
  int correct = 0;
  NoGradGuard no_grad;
  for (int64_t i = 0; i < kSamples; ++i) {
    const data::LoadedSample loaded = loader.load(i);
    const layers::BvllmOutput o = m.model->forward({model_sample(loaded)}, {.noise_free = true});
    const AnswerCheck check =
        check_answer(o.logits.select(0, 0), o.labels.select(0, 0), end_token_ids(m.tokenizers.qwen));
    const json& p = result["predictions"][static_cast<size_t>(i)];
    const int n = std::stoi(loaded.id.substr(1));
    EXPECT_EQ(p["id"], loaded.id);
    EXPECT_EQ(p["type"], asks_colour(n) ? "colour" : "motion");
    EXPECT_EQ(p["answer"], answer_of(n));
    EXPECT_EQ(p["correct"], check.correct) << loaded.id;
    if (check.correct) {
      EXPECT_EQ(p["predicted"], answer_of(n));  // special tokens skipped
    }
    auto& [type_n, type_correct] = per_type[p["type"].get<std::string>()];
    type_n += 1;
    type_correct += check.correct ? 1 : 0;
    correct += check.correct ? 1 : 0;
  }
  EXPECT_EQ(result["correct"], correct);
  EXPECT_DOUBLE_EQ(result["accuracy"].get<double>(), static_cast<double>(correct) / kSamples);
  ASSERT_EQ(result["types"].size(), 2u);
  for (const auto& [type, counts] : per_type) {
    const json& t = result["types"][type];
    EXPECT_EQ(t["n"], counts.first) << type;
    EXPECT_EQ(t["correct"], counts.second) << type;
    EXPECT_DOUBLE_EQ(t["accuracy"].get<double>(), static_cast<double>(counts.second) / counts.first);
  }
  // Chance: 3 colours, 2 directions among the manifest's answers.
  EXPECT_DOUBLE_EQ(result["types"]["colour"]["chance"].get<double>(), 1.0 / 3);
  EXPECT_DOUBLE_EQ(result["types"]["motion"]["chance"].get<double>(), 1.0 / 2);
  EXPECT_DOUBLE_EQ(result["chance"].get<double>(), (6 / 3.0 + 6 / 2.0) / kSamples);
  // The table: a row per type in the manifest's order, then the overall one; progress ends at 12/12.
  EXPECT_TRUE(has(log, "colour"));
  EXPECT_LT(log.find("colour"), log.find("motion"));
  EXPECT_TRUE(has(log, "overall"));
  EXPECT_TRUE(has(log, "33.3%"));
  EXPECT_TRUE(has(log, "12/12 (100.0%)"));
}

TEST_F(EvalTest, LimitAndErrors) {
  const std::string base = "--checkpoint=" + (*root_ / "random").string() + " --shards=" + (*root_ / "shards").string();
  const fs::path out = *root_ / "limit.json";
  std::string log;
  ASSERT_EQ(eval(base + " --manifest=" + (*root_ / "test.json").string() + " --limit=5 --out=" + out.string(), &log), 0)
      << log;
  EXPECT_EQ(json::parse(read_file(out))["samples"], 5);

  // A sample without a manifest record, a record without "type": one line naming what is missing.
  json manifest = json::parse(read_file(*root_ / "test.json"));
  json partial = json::array();
  for (size_t i = 1; i < manifest.size(); ++i) partial.push_back(manifest[i]);
  std::ofstream(*root_ / "partial.json") << partial.dump();
  EXPECT_NE(eval(base + " --manifest=" + (*root_ / "partial.json").string(), &log), 0);
  EXPECT_TRUE(has(log, "bvllm_eval: " + (*root_ / "shards").string() + ": sample "));
  EXPECT_TRUE(has(log, "\"v0\" has no record in " + (*root_ / "partial.json").string()));
  manifest[0].erase("type");
  std::ofstream(*root_ / "untyped.json") << manifest.dump();
  EXPECT_NE(eval(base + " --manifest=" + (*root_ / "untyped.json").string(), &log), 0);
  EXPECT_TRUE(has(log, "record 0 (id \"v0\"): no \"type\" field"));
  EXPECT_NE(eval(base, &log), 0);
  EXPECT_TRUE(has(log, "bvllm_eval: --manifest is required"));
  EXPECT_NE(eval("--checkpoint=" + (*root_ / "nowhere").string() +
                     " --shards=x --manifest=" + (*root_ / "test.json").string(),
                 &log),
            0);
  EXPECT_TRUE(has(log, "no checkpoint"));
}

}  // namespace
}  // namespace bvllm::train
