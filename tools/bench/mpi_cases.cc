// Multi-rank cases: every rank of an mpirun job runs them, rank 0 prints.
//
//   mpirun -np 2 --oversubscribe --allow-run-as-root build/bin/bvllm_bench --case=allreduce_cpu
//
// tests/reference/bench_allreduce_mpi4py.py times the same all-reduces through mpi4py.
// The C API only: Open MPI's mpi.h otherwise pulls in its C++ bindings (libmpi_cxx).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <gflags/gflags.h>
#include <mpi.h>
#include <stdlib.h>    // defines: getloadavg
#include <sys/mman.h>  // defines: madvise, MADV_HUGEPAGE

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "runtime/error.h"
#include "tools/bench/bench.h"

DEFINE_bool(allreduce_hugepages, false,
            "allreduce_cpu: madvise(MADV_HUGEPAGE) the buffer before first touch, as numpy does for large arrays "
            "(so as mpi4py's reference has them)");

namespace bvllm::bench {

namespace {

double load_average() {
  double load[1] = {0};
  return getloadavg(load, 1) == 1 ? load[0] : -1;
}

// The slowest rank's time of one operation: all ranks leave a barrier together, each times its
// own call, and the maximum over ranks is the operation's time (as the OSU benchmarks and
// nccl-tests report it). The barrier and the maximum are plain MPI and not timed.
double slowest_ms(const std::function<void()>& op) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  op();
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  MPI_Allreduce(MPI_IN_PLACE, &ms, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return ms;
}

// nccl-tests' convention (its doc/PERFORMANCE.md): algbw = bytes / time; a ring all-reduce moves
// 2(n-1)/n of the buffer through each rank's link, so busbw = algbw * 2(n-1)/n, comparable across
// rank counts and with the link's bandwidth.
double busbw_gbps(double bytes, double ms, int ranks) {
  if (ms <= 0) return 0;
  return bytes / (ms * 1e6) * 2.0 * (ranks - 1) / ranks;
}

// f32 sum all-reduce of 1, 4, 16, 64 and 256 MB through MpiCommunicator (non-blocking
// MPI_Iallreduce in place, waited by polling MPI_Test), and beside it, alternating iteration by
// iteration so that load from other processes falls on both alike, a blocking MPI_Allreduce of the
// same buffer (the raw C loop; one buffer, so that neither finds the other's in the cache). The
// buffer holds zeros while timed: sums of zeros stay zeros however many iterations run.
std::vector<Result> allreduce_cpu(const Options& options) {
  BVLLM_REQUIRE(parallel::mpi_initialized(),
                "allreduce_cpu measures MPI across ranks: run it under mpirun, e.g. mpirun -np 2 --oversubscribe "
                "--allow-run-as-root build/bin/bvllm_bench --case=allreduce_cpu");
  auto world = parallel::MpiCommunicator::world();
  const int ranks = world->size();
  std::vector<Result> results;
  for (const int64_t mb : {1, 4, 16, 64, 256}) {
    const int64_t bytes = mb << 20, n = bytes / 4;
    Tensor ours = Tensor::empty({n}, DType::F32);
    if (FLAGS_allreduce_hugepages) {
      // Transparent huge pages in "madvise" mode (Debian's default) back only memory that asks;
      // numpy asks for arrays of 4 MB and more. The whole pages inside the buffer:
      constexpr uintptr_t kPage = 4096;
      const auto begin = (reinterpret_cast<uintptr_t>(ours.raw_data()) + kPage - 1) & ~(kPage - 1);
      const auto end = (reinterpret_cast<uintptr_t>(ours.raw_data()) + static_cast<uintptr_t>(bytes)) & ~(kPage - 1);
      if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
    // One check that the sum is right before timing: member r contributes r + 1 everywhere.
    std::fill_n(ours.data<float>(), n, static_cast<float>(world->rank() + 1));
    world->all_reduce(ours);
    const float expected = static_cast<float>(ranks * (ranks + 1) / 2);
    BVLLM_REQUIRE(ours.data<float>()[0] == expected && ours.data<float>()[n - 1] == expected,
                  "allreduce_cpu: the sum of ", mb, " MB is wrong (", ours.data<float>()[0], ", expected ", expected,
                  ")");
    std::fill_n(ours.data<float>(), n, 0.0f);
    const auto bvllm_op = [&] { world->all_reduce(ours); };
    const auto raw_op = [&] {
      MPI_Allreduce(MPI_IN_PLACE, ours.data<float>(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    };
    const double load_before = load_average();
    for (int i = 0; i < options.warmup; ++i) slowest_ms(bvllm_op), slowest_ms(raw_op);
    Result r{"allreduce_cpu", {}, {}};
    std::vector<double> raw_ms;
    for (int i = 0; i < options.iters; ++i) {
      r.ms.push_back(slowest_ms(bvllm_op));
      raw_ms.push_back(slowest_ms(raw_op));
    }
    const double best = *std::min_element(r.ms.begin(), r.ms.end());
    const double raw_best = *std::min_element(raw_ms.begin(), raw_ms.end());
    r.extra["mb"] = static_cast<double>(mb);
    r.extra["bytes"] = static_cast<double>(bytes);
    r.extra["ranks"] = ranks;
    r.extra["algbw_GBps"] = static_cast<double>(bytes) / (median(r.ms) * 1e6);
    r.extra["busbw_GBps"] = busbw_gbps(static_cast<double>(bytes), median(r.ms), ranks);
    r.extra["best_busbw_GBps"] = busbw_gbps(static_cast<double>(bytes), best, ranks);
    r.extra["raw_mpi_median_ms"] = median(raw_ms);
    r.extra["raw_mpi_min_ms"] = raw_best;
    r.extra["raw_mpi_busbw_GBps"] = busbw_gbps(static_cast<double>(bytes), median(raw_ms), ranks);
    r.extra["raw_mpi_best_busbw_GBps"] = busbw_gbps(static_cast<double>(bytes), raw_best, ranks);
    r.extra["hugepages"] = FLAGS_allreduce_hugepages ? 1 : 0;
    r.extra["load_avg_before"] = load_before;
    r.extra["load_avg_after"] = load_average();
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace

const std::vector<Case>& mpi_cases() {
  static const std::vector<Case> cases = {
      {.name = "allreduce_cpu",
       .what = "f32 MPI all-reduce bus bandwidth, 1-256 MB, across the ranks of an mpirun job, beside MPI_Allreduce",
       .run = {},
       .run_sizes = allreduce_cpu,
       .multi_rank = true},
  };
  return cases;
}

}  // namespace bvllm::bench
