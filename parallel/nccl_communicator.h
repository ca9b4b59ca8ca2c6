// NCCL: the Communicator for CUDA tensors (parallel/communicator.h). Built in CUDA builds that find
// NCCL (BVLLM_WITH_NCCL); the ranks meet over MPI first, to share NCCL's unique id.
//
//   auto world = MpiCommunicator::world();
//   auto dp_mpi = world->split(dp_members, "dp");
//   auto dp = NcclCommunicator::create(*dp_mpi, local_rank % cuda::device_count());
//   dp->all_reduce(grad);                          // grad: contiguous, on that device
//
// Streams and overlap. The communicator owns a CUDA stream. An *_async call records an event on
// the caller's current stream (cuda::current_stream), makes the communicator's stream wait for
// it, and launches the NCCL operation there, so the collective overlaps kernels queued after the
// call. Work::wait() makes the caller's current stream wait for the operation (later kernels see
// the result) and blocks the host until the operation has completed, polling NCCL for errors, up
// to the communicator's timeout; test() never blocks.
//
// Where it differs from MpiCommunicator:
// - Reductions also take F16 and BF16 (NCCL reduces them natively); Bool moves as bytes.
// - send/recv to this rank itself are refused (NCCL would need both in one group).
// - send/recv are posted lazily: they are launched together, in one NCCL group, by the next
//   wait()/test() or collective (each still ordered after the caller's stream as of its own call).
//   NCCL's point-to-point operations block the GPU until the peer joins, so a rank that posts
//   send then recv while its peer does the same completes, as with MPI_Isend/MPI_Irecv, instead
//   of deadlocking on its own stream.
//
// Memory. Every tensor of an operation is marked as used on the communicator's stream
// (CachingAllocator::record_stream), so its memory is not reused before the operation has
// finished even if the caller drops the Work and the tensor early; the Work also keeps the tensors
// referenced until it has seen the operation complete.
//
// Failures. NCCL runs non-blocking (ncclConfig_t::blocking = 0), so no call can hang the host:
// creation, launches and wait() give up after CommOptions::timeout, abort the NCCL communicator
// (ncclCommAbort) and throw CommError naming this rank, the group, the collective and its sequence
// number. NCCL cannot tell which member is missing, and the message says so. Every later call on
// an aborted communicator throws CommError.
//
// One thread drives a communicator at a time. Counts are elements (research/distributed.md §0.7).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace bvllm::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `group`: its rank 0 makes the NCCL unique id, `group` broadcasts it (a U8 CPU
  // tensor), then every member selects `device` (cudaSetDevice, left set for the process) and
  // joins the NCCL communicator. Ranks, name() and world_ranks() are those of `group`. Throws
  // Error without a CUDA device `device`, CommError when NCCL fails or the members do not all join
  // within options.timeout.
  static std::unique_ptr<NcclCommunicator> create(MpiCommunicator& group, int device, const CommOptions& options = {});
  // Waits (up to the timeout) for the operations in flight, then destroys the NCCL communicator
  // (ncclCommAbort when they do not finish).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int device() const;  // the CUDA device every tensor must be on
  // Operations issued so far (the sequence number of the next one).
  int64_t sequence() const;
  // How long launches and wait() wait from now on (creation used CommOptions::timeout).
  void set_timeout(std::chrono::milliseconds timeout);

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
  // A one-element all-reduce, waited for on the host.
  void barrier() override;

  struct State;  // public for the Work in nccl_communicator.cc; defined there

 private:
  explicit NcclCommunicator(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace bvllm::parallel
