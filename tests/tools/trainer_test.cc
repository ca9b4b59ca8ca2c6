// bvllm_train (tools/train/trainer.h): exact resume after a SIGKILL, frozen parameters untouched,
// stage 2 starting from every stage-1 weight, malformed recipes refused before any work, the NaN
// stop, and the run directory's files. A tiny B-VLLM trains on shards this test writes: videos of
// a coloured square moving left or right, with captions (stage 1) and questions (stage 2).
#include "tools/train/trainer.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/checkpoint.h"
#include "recipes/recipe.h"
#include "tests/support/messages.h"
#include "tests/support/tiny_train.h"
#include "tools/train/model_builder.h"

namespace bvllm::train {
namespace {

using testing::bitwise_equal;
using testing::has;

namespace fs = std::filesystem;
using json = nlohmann::json;

// Shards, tokenizers and a recipe template, once for the suite.
class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("bvllm_trainer_test_" + std::to_string(::getpid())));
    testing::write_tiny_train_data(*root_);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  // A tiny stage-`stage` recipe over this suite's data, with --set style overrides applied.
  static std::string recipe_text(int stage, const std::vector<std::string>& overrides = {}) {
    return testing::tiny_recipe_text(*root_, stage, overrides);
  }

  static std::string write_recipe(const std::string& name, const std::string& text) {
    const fs::path path = *root_ / name;
    std::ofstream(path) << text;
    return path.string();
  }

  static TrainResult run(const std::string& recipe, const std::string& run_dir, TrainOptions options = {}) {
    options.recipe = recipe;
    options.run_dir = run_dir;
    std::ostringstream console;
    options.console = &console;
    return train(options);
  }

  static std::vector<json> metrics(const std::string& run_dir) { return testing::read_metrics(run_dir); }
  static std::map<std::string, Tensor> model_tensors(const std::string& dir) { return testing::checkpoint_model(dir); }

  static fs::path* root_;
};
fs::path* TrainerTest::root_ = nullptr;

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

// The program, for the SIGKILL test.
int run_program(const std::string& args) {
  return testing::run_command(testing::program_path("bvllm_train") + " " + args + " > /dev/null 2>&1");
}

TEST_F(TrainerTest, ResumeAfterSigkillIsBitwiseExact) {
  const std::string recipe = write_recipe("resume.pb", recipe_text(2));
  // init_from is not part of this test: stage 2 from random init.
  const std::string straight = (*root_ / "run_straight").string();
  const std::string killed = (*root_ / "run_killed").string();
  ASSERT_EQ(run_program(recipe + " --run_dir " + straight), 0);
  // Killed right after step 12's metrics line: the latest checkpoint is step 10, so steps 11-12 are
  // redone after the resume.
  EXPECT_NE(run_program(recipe + " --run_dir " + killed + " --debug_kill_after_step 12"), 0);
  ASSERT_EQ(metrics(killed).size(), 12u);
  ASSERT_EQ(run_program(recipe + " --run_dir " + killed + " --resume"), 0);

  const std::vector<json> a = metrics(straight), b = metrics(killed);
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;  // bitwise
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["lr"].get<double>(), b[i]["lr"].get<double>()) << "step " << i + 1;
  }
  // The loss moved: the run trained.
  EXPECT_LT(a.back()["loss"].get<double>(), a.front()["loss"].get<double>());

  const auto pa = model_tensors(straight + "/checkpoints"), pb = model_tensors(killed + "/checkpoints");
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& [name, t] : pa) {
    ASSERT_TRUE(pb.count(name)) << name;
    EXPECT_TRUE(bitwise_equal(t, pb.at(name))) << name;
  }
  const parallel::Checkpoint ca = parallel::load_checkpoint(straight + "/checkpoints");
  const parallel::Checkpoint cb = parallel::load_checkpoint(killed + "/checkpoints");
  ASSERT_TRUE(ca.tensors.count("optimizer-rank00000") && cb.tensors.count("optimizer-rank00000"));
  const NamedTensors &oa = ca.tensors.at("optimizer-rank00000"), &ob = cb.tensors.at("optimizer-rank00000");
  ASSERT_EQ(oa.size(), ob.size());
  EXPECT_GT(oa.size(), 0u);
  for (size_t i = 0; i < oa.size(); ++i) {
    EXPECT_EQ(oa[i].first, ob[i].first);
    EXPECT_TRUE(bitwise_equal(oa[i].second, ob[i].second)) << oa[i].first;
  }
  EXPECT_EQ(ca.texts.at("rank-00000.json"), cb.texts.at("rank-00000.json"));  // loader position, AdamW steps
}

TEST_F(TrainerTest, RunDirectoryWithCheckpointsIsRefusedWithoutResume) {
  const std::string recipe = write_recipe("refuse.pb", recipe_text(1, {"steps=2"}));
  const std::string dir = (*root_ / "run_refuse").string();
  run(recipe, dir);
  const std::string before = parallel::latest_checkpoint(dir + "/checkpoints").value();
  EXPECT_TRUE(has(testing::error_of([&] { run(recipe, dir); }), "pass --resume"));
  EXPECT_EQ(parallel::latest_checkpoint(dir + "/checkpoints").value(), before);
  EXPECT_EQ(metrics(dir).size(), 2u);  // the first run's metrics are still there
  const std::string empty = (*root_ / "run_nothing").string();
  TrainOptions resume;
  resume.resume = true;
  EXPECT_TRUE(has(testing::error_of([&] { run(recipe, empty, resume); }), "no checkpoint"));
}

TEST_F(TrainerTest, FrozenParametersStayBitIdenticalAndTrainableOnesMove) {
  const std::string recipe = write_recipe("frozen.pb", recipe_text(1, {"steps=6"}));
  const std::string dir = (*root_ / "run_frozen").string();
  run(recipe, dir);
  // The same recipe builds the same starting weights (seeded init).
  const recipes::Recipe r = recipes::load_recipe(recipe);
  const Tokenizers tok = load_tokenizers(r, recipe);
  const BuiltModel start = build_model(r, recipe, tok.bert.vocab_size());
  const auto trained = model_tensors(dir + "/checkpoints");
  int64_t frozen = 0, moved = 0;
  for (const auto& [name, t] : start.model->named_parameters()) {
    ASSERT_TRUE(trained.count(name)) << name;
    if (t.requires_grad()) {
      moved += bitwise_equal(t, trained.at(name)) ? 0 : 1;
    } else {
      ++frozen;
      EXPECT_TRUE(bitwise_equal(t, trained.at(name))) << "frozen parameter changed: " << name;
    }
  }
  EXPECT_GT(frozen, 20);  // EVA, the spatial Q-Former, embeddings, norms...
  EXPECT_GT(moved, 20);
  // The stage-1 trainable set is what the recipe says: nothing of EVA or the spatial Q-Former.
  for (const std::string& name : start.trainable) {
    EXPECT_EQ(name.find("vision_tower"), std::string::npos) << name;
    EXPECT_EQ(name.find("encoder_spatial"), std::string::npos) << name;
  }
}

TEST_F(TrainerTest, StageTwoStartsFromEveryStageOneWeight) {
  const std::string stage1 = write_recipe("s1.pb", recipe_text(1, {"steps=4"}));
  const std::string dir1 = (*root_ / "run_s1").string();
  run(stage1, dir1);
  const std::string stage2 = write_recipe("s2.pb", recipe_text(2, {"checkpoint.init_from=" + dir1 + "/checkpoints"}));
  const recipes::Recipe r = recipes::load_recipe(stage2);
  const Tokenizers tok = load_tokenizers(r, stage2);
  const BuiltModel built = build_model(r, stage2, tok.bert.vocab_size());
  const auto s1 = model_tensors(dir1 + "/checkpoints");
  size_t compared = 0;
  for (const auto& [name, t] : built.model->named_parameters()) {
    if (name.find(".lora_") != std::string::npos) continue;  // new in stage 2
    ASSERT_TRUE(s1.count(name)) << name;
    EXPECT_TRUE(bitwise_equal(t, s1.at(name))) << "not loaded from stage 1: " << name;
    ++compared;
  }
  EXPECT_EQ(compared, s1.size());  // every stage-1 tensor, not only the queries and LNs
  EXPECT_GT(built.lora_modules, 0);

  // A checkpoint that lacks a parameter is an error naming it, not a silent partial load.
  parallel::Checkpoint partial = parallel::load_checkpoint(dir1 + "/checkpoints");
  NamedTensors& model = partial.tensors.at("model");
  const std::string dropped = model.front().first;
  model.erase(model.begin());
  const std::string partial_dir = (*root_ / "partial").string();
  parallel::save_checkpoint(partial_dir, partial);
  const std::string bad = write_recipe("s2_bad.pb", recipe_text(2, {"checkpoint.init_from=" + partial_dir}));
  const recipes::Recipe rb = recipes::load_recipe(bad);
  EXPECT_TRUE(has(testing::error_of([&] { build_model(rb, bad, tok.bert.vocab_size()); }), dropped));
}

TEST_F(TrainerTest, MalformedRecipesFailBeforeAnyWork) {
  struct Case {
    std::string name, text, expect;
  };
  const std::string good = recipe_text(2);
  const std::vector<Case> cases = {
      {"unknown_field", good + "optimiser { lr: 1 }\n", "optimiser"},
      {"wrong_type", replace(good, "steps: 20", "steps: \"twenty\""), "steps"},
      {"missing_data", recipe_text(2, {"data.shards=/nonexistent/shards"}), "data.shards"},
      {"lora_matches_nothing", recipe_text(2, {"lora.target_regex=qkv_proj$"}), "lora.target_regex"},
      {"glob_matches_nothing", recipe_text(2, {"trainable.unfreeze=vlm_att_*"}), "trainable.unfreeze"},
      {"batch_does_not_divide", recipe_text(2, {"batch.global_batch=6"}), "batch.global_batch"},
  };
  for (const Case& c : cases) {
    const std::string path = write_recipe(c.name + ".pb", c.text);
    const std::string dir = (*root_ / ("run_" + c.name)).string();
    const std::string error = testing::error_of([&] { run(path, dir); });
    EXPECT_TRUE(has(error, path)) << c.name;
    EXPECT_TRUE(has(error, c.expect)) << c.name << ": " << error;
    EXPECT_FALSE(fs::exists(dir)) << c.name << ": the run directory was created";
  }
  // The line number of a parse error.
  const std::string path = write_recipe("line.pb", "name: \"x\"\nsteps: 3\nbogus: 1\n");
  EXPECT_TRUE(has(testing::error_of([&] { run(path, (*root_ / "run_line").string()); }), path + ":3:"));
}

TEST_F(TrainerTest, NanLossStopsAndKeepsTheLastGoodCheckpoint) {
  // An absurd lr with no clipping sends the weights to inf within a few steps.
  const std::string recipe = write_recipe(
      "nan.pb", recipe_text(1, {"optimizer.lr=1e30", "optimizer.clip_grad_norm=0", "schedule.kind=CONSTANT",
                                "schedule.warmup_steps=0", "checkpoint.every_steps=1"}));
  const std::string dir = (*root_ / "run_nan").string();
  const TrainResult result = run(recipe, dir);
  ASSERT_TRUE(result.diverged);
  EXPECT_LT(result.step, 20);
  ASSERT_FALSE(result.checkpoint.empty());
  // The latest checkpoint is the last finite step, and it loads.
  const parallel::Checkpoint c = parallel::load_checkpoint(dir + "/checkpoints");
  EXPECT_EQ(c.step, result.step);
  const std::vector<json> lines = metrics(dir);
  ASSERT_EQ(lines.size(), static_cast<size_t>(result.step) + 1);
  EXPECT_TRUE(lines.back()["loss"].is_null() || lines.back()["grad_norm"].is_null());
  // The program's exit status says so.
  const std::string dir2 = (*root_ / "run_nan2").string();
  EXPECT_EQ(run_program(recipe + " --run_dir " + dir2), 2);
}

TEST_F(TrainerTest, MetricsHaveEveryFieldAndTheScheduleRuns) {
  const std::string recipe = write_recipe("metrics.pb", recipe_text(1, {"steps=6"}));
  const std::string dir = (*root_ / "run_metrics").string();
  const TrainResult result = run(recipe, dir);
  EXPECT_EQ(result.step, 6);
  EXPECT_EQ(result.total_steps, 6);
  const std::vector<json> lines = metrics(dir);
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i = 0; i < lines.size(); ++i) {
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "epoch", "elapsed_s"})
      EXPECT_TRUE(lines[i].contains(key)) << key;
    EXPECT_EQ(lines[i]["step"].get<int64_t>(), static_cast<int64_t>(i) + 1);
  }
  // Warmup of 2 steps then cosine to 0 over 6 (transformers' lambdas): step k uses λ(k - 1).
  EXPECT_EQ(lines[0]["lr"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(lines[1]["lr"].get<double>(), 3e-3 * 0.5);
  EXPECT_DOUBLE_EQ(lines[2]["lr"].get<double>(), 3e-3);
  EXPECT_LT(lines[5]["lr"].get<double>(), lines[3]["lr"].get<double>());
  // 4 samples a step of 24: the epoch position advances by 1/6.
  EXPECT_NEAR(lines[5]["epoch"].get<double>(), 1.0, 1e-12);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "recipe.pb"));
  EXPECT_NO_THROW(recipes::load_recipe((fs::path(dir) / "recipe.pb").string()));
}

}  // namespace
}  // namespace bvllm::train
