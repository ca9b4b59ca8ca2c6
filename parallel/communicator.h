// The collectives that ranks use to train one model together (../shared/DESIGN.md parallel/,
// research/distributed.md §2.8). One interface, two implementations:
//   MpiCommunicator  (parallel/mpi_communicator.h)  CPU tensors, over MPI: many ranks on one machine
//                                                    run the same code as a cluster, so tests use it;
//   NcclCommunicator (parallel/nccl_communicator.h) CUDA tensors, over NCCL (CUDA builds with NCCL).
//
// Rules every implementation keeps:
// - Every member issues the same collectives in the same order; a rank with nothing to contribute
//   still joins (with zeros).
// - Tensors are contiguous; counts are elements of the tensor's dtype, never bytes.
// - Reductions are defined for F32, F64, I32, I64 and U8 (integer data makes tests exact); all_gather,
//   broadcast and send/recv move any dtype.
// - reduce_scatter and all_gather split a flat tensor into size() equal chunks: chunk r belongs to
//   rank r. A length that size() does not divide is refused (the ZeRO buckets pad to a multiple).
// - An *_async call returns at once with a Work; the tensors must stay alive and untouched until
//   wait() returns. The blocking calls are the async ones followed by wait().
// - wait() gives up after the communicator's timeout and throws CommError naming this rank, the
//   group, the collective and its sequence number, and the members that had not reached it (when
//   the implementation can tell); the caller then ends the whole job (abort_job), so no rank is left
//   hanging.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace bvllm::parallel {

enum class ReduceOp { Sum, Max, Min };

// A collective that failed or timed out. The job cannot go on: every rank's state is suspect.
class CommError : public Error {
 public:
  using Error::Error;
};

// An operation in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Advances the operation without blocking; true once it has completed.
  virtual bool test() = 0;
  // Blocks until completion; throws CommError on timeout or failure.
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  // For messages: the group's name ("world", "dp", "tp", ...) and each member's world rank.
  virtual const std::string& name() const = 0;
  virtual const std::vector<int>& world_ranks() const = 0;

  // In place: every member's `tensor` becomes the reduction over members.
  virtual std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op = ReduceOp::Sum) = 0;
  // input: [size() * n] on every member; output: [n], member r gets the reduction of chunk r.
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output,
                                                     ReduceOp op = ReduceOp::Sum) = 0;
  // input: [n] on every member; output: [size() * n] with member r's input as chunk r.
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output) = 0;
  // In place: every member's `tensor` becomes root's.
  virtual std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root) = 0;
  // Point to point; peer is a rank of this group. The receiver's tensor has the sender's shape and dtype.
  virtual std::unique_ptr<Work> send_async(const Tensor& tensor, int peer) = 0;
  virtual std::unique_ptr<Work> recv_async(Tensor& tensor, int peer) = 0;
  virtual void barrier() = 0;

  void all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum) { all_reduce_async(tensor, op)->wait(); }
  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op = ReduceOp::Sum) {
    reduce_scatter_async(input, output, op)->wait();
  }
  void all_gather(const Tensor& input, Tensor& output) { all_gather_async(input, output)->wait(); }
  void broadcast(Tensor& tensor, int root) { broadcast_async(tensor, root)->wait(); }
  void send(const Tensor& tensor, int peer) { send_async(tensor, peer)->wait(); }
  void recv(Tensor& tensor, int peer) { recv_async(tensor, peer)->wait(); }
};

// reduce_scatter (sum) whose additions run in rank order, ((x_0 + x_1) + x_2) + ..., on every
// element: the same bits whatever algorithm the transport would pick, and the same as one process
// adding the members' values in turn (so data-parallel runs can equal a single process exactly).
// Point to point underneath: each member sends chunk q to member q and adds what it receives in
// wait(); the traffic of a ring reduce-scatter, (size - 1) / size of the input per member.
// F32 and F64; `input` and `output` as reduce_scatter_async takes them.
std::unique_ptr<Work> ordered_reduce_scatter_async(Communicator& comm, const Tensor& input, Tensor& output);

// Every member's `mine` (any length), in rank order: for the few small messages that are not
// tensors (checkpoint manifests). Two collectives: the lengths, then the padded bytes.
std::vector<std::string> all_gather_bytes(Communicator& comm, const std::string& mine);

}  // namespace bvllm::parallel
