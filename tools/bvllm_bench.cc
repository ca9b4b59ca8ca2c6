// bvllm_bench: speed (and, for GPU cases, memory) of kernels and training steps. One JSON line
// per case, so runs can be compared and recorded in docs/benchmarks.md.
//
//   build/bin/bvllm_bench --case=block_train_cpu --iters=20
//   build/bin/bvllm_bench --case=gpu          # the GPU cases (bf16 GEMM, attention, 7B-layer step)
//   build/bin/bvllm_bench --list
//   mpirun -np 2 --oversubscribe --allow-run-as-root build/bin/bvllm_bench --case=allreduce_cpu
//
// Under mpirun every rank runs the selected cases and rank 0 prints; a plain run needs no MPI.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>

#include <iostream>
#include <memory>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "runtime/cuda/backend.h"
#include "runtime/error.h"
#include "tools/bench/bench.h"

DEFINE_string(case, "all", "case to run (see --list), or a group: cpu, gpu, all (gpu cases need a GPU)");
DEFINE_int32(iters, 10, "timed iterations per case");
DEFINE_int32(warmup, 2, "untimed iterations before timing");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default, i.e. OMP_NUM_THREADS or all cores)");
DEFINE_bool(list, false, "list the cases and exit");

int main(int argc, char** argv) {
  std::unique_ptr<bvllm::parallel::MpiSession> mpi;
  if (bvllm::parallel::launched_by_mpi()) mpi = std::make_unique<bvllm::parallel::MpiSession>(&argc, &argv);
  const bool print = bvllm::parallel::world_rank() == 0;
  gflags::SetUsageMessage("bvllm_bench --case=NAME|cpu|gpu|all [--iters=N] [--warmup=N] [--threads=N]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  using bvllm::bench::cases;
  if (FLAGS_list) {
    if (print)
      for (const auto& c : cases()) std::cout << c.name << "\t" << c.what << "\n";
    return 0;
  }
  if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);
  try {
    bool found = false;
    for (const auto& c : cases()) {
      const bool gpu = c.name.ends_with("_gpu");
      const bool in_group = !c.multi_rank || mpi != nullptr;
      const bool selected =
          FLAGS_case == c.name || (in_group && ((FLAGS_case == "cpu" && !gpu) || (FLAGS_case == "gpu" && gpu) ||
                                                (FLAGS_case == "all" && (!gpu || bvllm::cuda::available()))));
      if (!selected) continue;
      found = true;
      const bvllm::bench::Options options{.warmup = FLAGS_warmup, .iters = FLAGS_iters};
      std::vector<bvllm::bench::Result> results;
      if (c.run_sizes)
        results = c.run_sizes(options);
      else
        results.push_back(c.run(options));
      for (const auto& r : results)
        if (print) std::cout << bvllm::bench::to_json(r) << std::endl;
    }
    BVLLM_REQUIRE(found, "unknown case '", FLAGS_case, "' (see --list)");
  } catch (const bvllm::Error& e) {
    // Under mpirun the other ranks may be waiting in a collective: end them all.
    if (bvllm::parallel::world_size() > 1) bvllm::parallel::abort_job(std::string("bvllm_bench: ") + e.what());
    std::cerr << "bvllm_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
