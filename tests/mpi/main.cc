// The main of the multi-rank tests (tests/mpi/*_test.cc, run by ctest under mpirun with 2, 3 and 4
// ranks). Every rank runs the same test cases in the same order, so their collectives line up.
// Rank 0 prints GoogleTest's usual output; the other ranks print only their own failures, each
// line prefixed with "[rank R]". The exit status is nonzero on every rank when any rank failed
// (the verdicts are all-reduced), so mpirun and ctest see a failure wherever it happened.
#include <gtest/gtest.h>
// The C API only: Open MPI's mpi.h otherwise pulls in its deprecated C++ bindings, which need
// libmpi_cxx (MPI::MPI_C does not link it).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <string>

#include "parallel/mpi_communicator.h"

namespace {

// Prints a failing rank's failures, which its removed default printer would have shown.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::ostringstream out;
    out << "[rank " << rank_ << "] " << (result.file_name() ? result.file_name() : "unknown file") << ":"
        << result.line_number() << ": Failure\n";
    std::istringstream lines(result.message());
    for (std::string line; std::getline(lines, line);) out << "[rank " << rank_ << "] " << line << "\n";
    std::fputs(out.str().c_str(), stderr);
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  bvllm::parallel::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = bvllm::parallel::world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    const std::unique_ptr<::testing::TestEventListener> removed(listeners.Release(listeners.default_result_printer()));
    listeners.Append(std::make_unique<RankFailurePrinter>(rank).release());  // gtest takes ownership
  }
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed) std::fprintf(stderr, "[rank 0] another rank failed (see its output)\n");
  return any_failed;
}
