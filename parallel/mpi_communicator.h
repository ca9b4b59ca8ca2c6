// MPI: the launcher (mpirun, srun) and the Communicator for CPU tensors (parallel/communicator.h).
//
//   MpiSession mpi(&argc, &argv);                 // MPI_Init_thread; MPI_Finalize at scope exit
//   auto world = MpiCommunicator::world();        // every rank of the job
//   auto dp = world->split(members, "dp");        // a group (collective over the parent)
//
// A program that was not started by mpirun runs as a world of one (MPI's singleton init).
//
// Every collective runs as non-blocking MPI (MPI_Iallreduce, ...); wait() polls MPI_Test until it
// completes or the communicator's timeout passes. To say who is missing when it times out, each
// member publishes in a small MPI RMA window the number of the last collective it entered on the
// communicator (its sequence number, counted from 1) and what that collective was; the rank that
// times out reads the others' with bounded polling and names in its CommError the world ranks that
// had not entered (or entered a different collective). A counter that cannot be read within a few
// seconds is reported as unreadable: the reporting path never hangs.
//
// Environment: BVLLM_COMM_TIMEOUT_S (seconds, may be fractional) replaces the 10-minute default of
// CommOptions::timeout; a timeout set in CommOptions by the program wins over it.
#pragma once

#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace bvllm::parallel {

// MPI_Init_thread at construction, MPI_Finalize at destruction (unless the job was aborted).
// MPI_THREAD_FUNNELED: only the thread that made the session calls MPI. When MPI is already
// initialized (a test main that made its own session) it does nothing and leaves MPI_Finalize to
// the owner. Before MPI_Init it sets OMPI_MCA_coll_libnbc_iallreduce_algorithm=1 (Open MPI's ring
// for MPI_Iallreduce) unless the environment already sets it.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owner_ = false;
};

// Whether a launcher started this process (mpirun, mpiexec, srun with PMI/PMIx): its environment
// names a rank. A plain run can then skip MPI altogether, singleton init included.
bool launched_by_mpi();
bool mpi_initialized();
int world_rank();  // 0 when MPI is not initialized
int world_size();  // 1 when MPI is not initialized

// Ends every rank of the job: prints "bvllm: rank R of N: <message>" to stderr, then MPI_Abort (or
// exits with `code` when MPI is not initialized). Never returns.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

// 10 minutes, or BVLLM_COMM_TIMEOUT_S when set (Error when it is not a positive number).
std::chrono::milliseconds default_comm_timeout();

struct CommOptions {
  // How long wait() waits for a collective before it throws CommError naming the missing ranks.
  std::chrono::milliseconds timeout = default_comm_timeout();
  // The most elements one MPI call moves (MPI counts are int): all_reduce, broadcast and send/recv
  // split a larger tensor into several calls, reduce_scatter and all_gather split each member's
  // chunk (through a staging buffer as large as the input). Every member must use the same value.
  // Tests lower it to exercise the splitting; 1 to INT_MAX.
  int64_t max_chunk_elements = INT_MAX;
};

class MpiCommunicator final : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD, named "world". Collective over the job. Throws Error when MPI
  // is not initialized (no MpiSession).
  static std::unique_ptr<MpiCommunicator> world(const CommOptions& options = {});
  ~MpiCommunicator() override;

  // Collective over this communicator: every member passes the world ranks of its own group (each
  // member in exactly one group; usually sorted) and gets that group's communicator, ranked in the
  // order of `members`, with this communicator's options. Throws Error when this rank is not in
  // `members` or the members of a group passed different lists (after joining the split, so the
  // others do not hang in it).
  std::unique_ptr<MpiCommunicator> split(const std::vector<int>& members, const std::string& name) const;

  int rank() const override;
  int size() const override;
  const std::string& name() const override;
  const std::vector<int>& world_ranks() const override;

  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output) override;
  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root) override;
  std::unique_ptr<Work> send_async(const Tensor& tensor, int peer) override;
  std::unique_ptr<Work> recv_async(Tensor& tensor, int peer) override;
  void barrier() override;

  const CommOptions& options() const;

  // A Work must not outlive its communicator. A Work destroyed before its operation completed
  // (e.g. while a CommError unwinds) leaves the operation and its buffers to the communicator,
  // which then does not free its MPI objects (that would block on the missing members): after a
  // CommError the job is expected to end (abort_job).
 private:
  struct State;
  explicit MpiCommunicator(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace bvllm::parallel
