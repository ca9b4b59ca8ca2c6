// bvllm_train under mpirun (docs/distributed.md): dp = 2 and 4 ranks, ZeRO stages 0, 1 and 2 with
// both reduce-scatter modes, give the losses, gradient norms and parameters of one process with
// the same global batch (within 1e-6 relative, over 20 steps of the tiny stage-2 recipe: LoRA with
// dropout and Gumbel noise, both keyed by the micro-batch's position; sums over ranks run in rank
// order, so with one micro-batch per rank they are in fact bitwise equal); a rank killed in the middle
// of a step ends the whole job, naming it, and --resume then continues with identical losses; a
// checkpoint of a dp = 2 run resumes on dp = 4 (the optimizer state re-partitioned).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/checkpoint.h"
#include "tests/support/fixtures.h"
#include "tests/support/tiny_train.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class DistributedTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("bvllm_distributed_test_" + std::to_string(::getpid())));
    testing::write_tiny_train_data(*root_);
    recipe_ = new std::string((*root_ / "stage2.pb").string());
    std::ofstream(*recipe_) << testing::tiny_recipe_text(*root_, 2, {"checkpoint.every_steps=10"});
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete recipe_;
  }

  // bvllm_train over `ranks` ranks (0: without mpirun) with micro-batches of 2, `accum` of them
  // per rank and step; the exit status. Output goes to RUN_DIR.log.
  static int train(const std::string& run_dir, int ranks, int accum, const std::string& extra = "") {
    const int dp = std::max(ranks, 1);
    std::ostringstream command;
    if (ranks > 0) command << BVLLM_MPIEXEC << " --oversubscribe --allow-run-as-root -np " << ranks << " ";
    command << testing::program_path("bvllm_train") << " " << *recipe_ << " --run_dir " << run_dir
            << " --threads 1 --set batch.micro_batch=2 --set batch.grad_accum=" << accum
            << " --set batch.global_batch=" << 2 * accum * dp << " " << extra << " > " << run_dir << ".log 2>&1";
    return testing::run_command(command.str());
  }

  static std::string log_of(const std::string& run_dir) {
    std::ifstream in(run_dir + ".log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // Steps [first, last] of two runs agree: loss and gradient norm within `tolerance` relative.
  static void expect_same_steps(const std::string& a, const std::string& b, size_t first, size_t last,
                                double tolerance) {
    const std::vector<json> ma = testing::read_metrics(a), mb = testing::read_metrics(b);
    ASSERT_GE(ma.size(), last);
    ASSERT_GE(mb.size(), last);
    for (size_t s = first - 1; s < last; ++s) {
      for (const char* field : {"loss", "grad_norm"}) {
        const double x = ma[s][field].get<double>(), y = mb[s][field].get<double>();
        EXPECT_LE(std::abs(x - y), tolerance * std::abs(y))
            << field << " of step " << s + 1 << ": " << a << " vs " << b;
      }
    }
  }

  // Every parameter of the two runs' last checkpoints within `tolerance` (max |a - b| / max |b|
  // per tensor); returns the largest difference seen.
  static double expect_same_parameters(const std::string& a, const std::string& b, double tolerance) {
    const auto pa = testing::checkpoint_model(a + "/checkpoints"), pb = testing::checkpoint_model(b + "/checkpoints");
    EXPECT_EQ(pa.size(), pb.size());
    double worst = 0;
    for (const auto& [name, t] : pb) {
      if (!pa.count(name)) {
        ADD_FAILURE() << name << " missing in " << a;
        continue;
      }
      const double e = testing::rel_error(pa.at(name), t);
      worst = std::max(worst, e);
      EXPECT_LE(e, tolerance) << name << ": " << a << " vs " << b;
    }
    return worst;
  }

  static fs::path* root_;
  static std::string* recipe_;
};
fs::path* DistributedTrain::root_ = nullptr;
std::string* DistributedTrain::recipe_ = nullptr;

TEST_F(DistributedTrain, DataParallelRanksEqualOneProcessWithTheGlobalBatch) {
  struct Mode {
    const char* name;
    const char* sets;
  };
  const std::vector<Mode> modes = {
      {"zero0", "--set parallel.zero_stage=0"},
      {"zero1", "--set parallel.zero_stage=1"},
      {"zero2_step", "--set parallel.zero_stage=2 --set parallel.grad_reduce=PER_STEP"},
      {"zero2_micro",
       "--set parallel.zero_stage=2 --set parallel.grad_reduce=PER_MICRO_BATCH --set "
       "parallel.bucket_elements=1000"},
  };
  for (int dp : {2, 4}) {
    const std::string reference = (*root_ / ("one_process_accum" + std::to_string(dp))).string();
    ASSERT_EQ(train(reference, 0, dp), 0) << log_of(reference);
    for (const Mode& mode : modes) {
      SCOPED_TRACE(::testing::Message() << "dp " << dp << " " << mode.name);
      const std::string run = (*root_ / ("dp" + std::to_string(dp) + "_" + mode.name)).string();
      ASSERT_EQ(train(run, dp, 1, mode.sets), 0) << log_of(run);
      expect_same_steps(run, reference, 1, 20, 1e-6);
      const double worst = expect_same_parameters(run, reference, 1e-6);
      RecordProperty("max_rel_param_difference_dp" + std::to_string(dp) + "_" + mode.name, std::to_string(worst));
    }
  }
  // The loss moved, so agreeing means something.
  const std::vector<json> m = testing::read_metrics((*root_ / "one_process_accum2").string());
  EXPECT_LT(m.back()["loss"].get<double>(), m.front()["loss"].get<double>());
}

// With several micro-batches on each rank the additions group differently from one process's
// ((g0 + g2) + (g1 + g3) against ((g0 + g1) + g2) + g3), so the runs agree to rounding, not to
// the bit: the losses and gradient norms within 1e-5. The parameters are not compared: AdamW turns
// the rounding noise of gradients that are zero in exact arithmetic (the Q-Former's key biases,
// to which softmax is blind) into lr-sized steps of either sign.
TEST_F(DistributedTrain, AccumulationOnEachRankToo) {
  // dp 2 x grad_accum 2 against one process with grad_accum 4.
  const std::string reference = (*root_ / "one_process_accum4").string();
  if (!fs::exists(reference + "/metrics.jsonl")) {
    ASSERT_EQ(train(reference, 0, 4), 0) << log_of(reference);
  }
  const std::string run = (*root_ / "dp2_accum2").string();
  ASSERT_EQ(train(run, 2, 2, "--set parallel.zero_stage=2"), 0) << log_of(run);
  expect_same_steps(run, reference, 1, 20, 1e-5);
}

TEST_F(DistributedTrain, AKilledRankEndsTheJobAndResumeContinuesExactly) {
  const std::string straight = (*root_ / "kill_straight").string();
  const std::string killed = (*root_ / "kill_killed").string();
  const std::string zero = "--set parallel.zero_stage=2 --set parallel.comm_timeout_s=60";
  ASSERT_EQ(train(straight, 2, 1, zero), 0) << log_of(straight);
  // Rank 1 dies in the middle of step 13 (after its first forward); the checkpoint of step 10 is
  // the latest. The job must end (not hang) and say which rank died.
  const auto begin = std::chrono::steady_clock::now();
  EXPECT_NE(train(killed, 2, 1, zero + " --debug_kill_after_step 12 --debug_kill_rank 1"), 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_LT(seconds, 60.0);
  const std::string log = log_of(killed);
  EXPECT_TRUE(log.find("rank 1") != std::string::npos) << log;
  EXPECT_EQ(parallel::latest_checkpoint(killed + "/checkpoints").value(),
            (fs::path(killed) / "checkpoints" / parallel::checkpoint_dir_name(10)).string());
  ASSERT_EQ(train(killed, 2, 1, zero + " --resume"), 0) << log_of(killed);
  // The same ranks, the same reductions: bitwise the run that was never stopped.
  expect_same_steps(killed, straight, 1, 20, 0.0);
  expect_same_parameters(killed, straight, 0.0);
}

TEST_F(DistributedTrain, ACheckpointOfTwoRanksResumesOnFour) {
  // dp 2 x grad_accum 2 and dp 4 x grad_accum 1 have the same global batch of 8: stop the first at
  // step 10, continue on four ranks, compare with the first run straight through.
  const std::string straight = (*root_ / "reshard_straight").string();
  const std::string moved = (*root_ / "reshard_moved").string();
  ASSERT_EQ(train(straight, 2, 2, "--set parallel.zero_stage=2"), 0) << log_of(straight);
  ASSERT_EQ(train(moved, 2, 2, "--set parallel.zero_stage=2 --debug_stop_after_step 10"), 0) << log_of(moved);
  ASSERT_EQ(train(moved, 4, 1, "--set parallel.zero_stage=2 --resume"), 0) << log_of(moved);
  // Rounding apart (see AccumulationOnEachRankToo); a wrongly re-partitioned optimizer state
  // would move the losses by far more.
  expect_same_steps(moved, straight, 11, 20, 1e-5);
}

}  // namespace
}  // namespace bvllm::train
