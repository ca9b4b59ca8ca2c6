// bvllm_train: trains B-VLLM as a recipe says (tools/train/trainer.h; recipes/recipe.proto is the
// schema, docs/recipes.md explains it).
//
//   bvllm_train RECIPE [--run_dir DIR] [--resume] [--set FIELD.PATH=VALUE ...]
//
//   build/bin/bvllm_train recipes/tiny_stage1.pb --run_dir runs/tiny1
//   build/bin/bvllm_train recipes/tiny_stage1.pb --run_dir runs/tiny1 --resume
//   build/bin/bvllm_train recipes/stage2.pb --set optimizer.lr=2e-4 --set steps=8
//
//   mpirun -np 4 build/bin/bvllm_train recipes/tiny_stage1.pb     # 4 data-parallel ranks
//
// Under mpirun (or srun: any MPI launcher) every rank runs this program; the recipe's parallel
// section lays them out (docs/distributed.md). A rank that fails ends the whole job (MPI_Abort)
// with a message naming the rank and the error; a collective that waits longer than
// parallel.comm_timeout_s names the ranks that did not join it and ends the job too.
//
// --set may be given any number of times (applied in order). Exit status: 0 when the run finished
// (or stopped where asked), 1 for an error (a malformed recipe: one message naming the file and
// field, before any work), 2 when the loss or gradient norm became NaN/inf (the last good
// checkpoint is kept).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/process_grid.h"
#include "recipes/recipe.h"
#include "runtime/error.h"
#include "tools/train/trainer.h"

DEFINE_string(run_dir, "", "the run's directory (metrics, checkpoints); default runs/<recipe name>");
DEFINE_bool(resume, false, "continue from the latest checkpoint of --run_dir");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default)");
DEFINE_int64(debug_stop_after_step, 0, "testing: return after this optimizer step");
DEFINE_int64(debug_kill_after_step, 0,
             "testing: SIGKILL rank --debug_kill_rank in the middle of the step after this one");
DEFINE_int32(debug_kill_rank, 0, "testing: the rank --debug_kill_after_step kills");

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

// How long a collective may wait: BVLLM_COMM_TIMEOUT_S when set (an operator's override), else the
// recipe's parallel.comm_timeout_s when it parses (the trainer reports a recipe that does not), else
// the default.
bvllm::parallel::CommOptions comm_options(const std::string& recipe, const std::vector<std::string>& sets) {
  bvllm::parallel::CommOptions options;
  if (std::getenv("BVLLM_COMM_TIMEOUT_S") != nullptr) return options;  // default_comm_timeout() reads it
  try {
    const double seconds = bvllm::recipes::load_recipe(recipe, sets).parallel().comm_timeout_s();
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  } catch (const bvllm::Error&) {
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  gflags::SetUsageMessage(kUsage);
  // MPI only when a launcher started us: a plain run needs no MPI runtime at all.
  std::unique_ptr<bvllm::parallel::MpiSession> mpi;
  if (bvllm::parallel::launched_by_mpi()) mpi = std::make_unique<bvllm::parallel::MpiSession>(&argc, &argv);
  const bool many = bvllm::parallel::world_size() > 1;
  try {
    std::vector<std::string> sets = take_set_flags(argc, argv);
    gflags::ParseCommandLineFlags(&argc, &argv, true);
    if (argc != 2) {
      if (bvllm::parallel::world_rank() == 0) std::cerr << "usage: " << kUsage << std::endl;
      return 1;
    }
    if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);
    std::unique_ptr<bvllm::parallel::MpiCommunicator> world;
    if (mpi != nullptr) world = bvllm::parallel::MpiCommunicator::world(comm_options(argv[1], sets));
    const bvllm::train::TrainResult result = bvllm::train::train({.recipe = argv[1],
                                                                  .overrides = std::move(sets),
                                                                  .run_dir = FLAGS_run_dir,
                                                                  .resume = FLAGS_resume,
                                                                  .world = world.get(),
                                                                  .stop_after_step = FLAGS_debug_stop_after_step,
                                                                  .kill_after_step = FLAGS_debug_kill_after_step,
                                                                  .kill_rank = FLAGS_debug_kill_rank,
                                                                  .console = nullptr});
    return result.diverged ? 2 : 0;
  } catch (const bvllm::Error& e) {
    // One rank's failure is the job's: end every rank rather than leave them waiting.
    if (many) bvllm::parallel::abort_job(std::string("bvllm_train: ") + e.what());
    std::cerr << "bvllm_train: " << e.what() << std::endl;
    return 1;
  }
}
