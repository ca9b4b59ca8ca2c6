// bvllm_train: trains B-VLLM as a recipe says (tools/train/trainer.h; recipes/recipe.proto is the
// schema, docs/recipes.md explains it).
//
//   bvllm_train RECIPE [--run_dir DIR] [--resume] [--set FIELD.PATH=VALUE ...]
//
//   build/bin/bvllm_train recipes/tiny_stage1.pb --run_dir runs/tiny1
//   build/bin/bvllm_train recipes/tiny_stage1.pb --run_dir runs/tiny1 --resume
//   build/bin/bvllm_train recipes/stage2.pb --set optimizer.lr=2e-4 --set steps=8
//
// --set may be given any number of times (applied in order). Exit status: 0 when the run finished
// (or stopped where asked), 1 for an error (a malformed recipe: one message naming the file and
// field, before any work), 2 when the loss or gradient norm became NaN/inf (the last good
// checkpoint is kept).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>

#include <iostream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tools/train/trainer.h"

DEFINE_string(run_dir, "", "the run's directory (metrics, checkpoints); default runs/<recipe name>");
DEFINE_bool(resume, false, "continue from the latest checkpoint of --run_dir");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default)");
DEFINE_int64(debug_stop_after_step, 0, "testing: return after this optimizer step");
DEFINE_int64(debug_kill_after_step, 0, "testing: SIGKILL the process after this optimizer step");

namespace {

constexpr const char* kUsage =
    "bvllm_train RECIPE [--run_dir DIR] [--resume] [--set FIELD.PATH=VALUE ...]\n"
    "  RECIPE     a protobuf text recipe (recipes/*.pb; the schema is recipes/recipe.proto)\n"
    "  --set      overrides a recipe field by its path, e.g. --set optimizer.lr=2e-4 --set steps=8";

// --set is repeatable, which gflags flags are not: take every "--set X" / "--set=X" out of argv
// before gflags sees it.
std::vector<std::string> take_set_flags(int& argc, char** argv) {
  std::vector<std::string> sets;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--set" || arg == "-set") {
      BVLLM_REQUIRE(i + 1 < argc, "--set needs FIELD.PATH=VALUE");
      sets.emplace_back(argv[++i]);
    } else if (arg.rfind("--set=", 0) == 0 || arg.rfind("-set=", 0) == 0) {
      sets.push_back(arg.substr(arg.find('=') + 1));
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return sets;
}

}  // namespace

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  gflags::SetUsageMessage(kUsage);
  try {
    std::vector<std::string> sets = take_set_flags(argc, argv);
    gflags::ParseCommandLineFlags(&argc, &argv, true);
    if (argc != 2) {
      std::cerr << "usage: " << kUsage << std::endl;
      return 1;
    }
    if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);
    const bvllm::train::TrainResult result = bvllm::train::train({.recipe = argv[1],
                                                                  .overrides = std::move(sets),
                                                                  .run_dir = FLAGS_run_dir,
                                                                  .resume = FLAGS_resume,
                                                                  .stop_after_step = FLAGS_debug_stop_after_step,
                                                                  .kill_after_step = FLAGS_debug_kill_after_step});
    return result.diverged ? 2 : 0;
  } catch (const bvllm::Error& e) {
    std::cerr << "bvllm_train: " << e.what() << std::endl;
    return 1;
  }
}
