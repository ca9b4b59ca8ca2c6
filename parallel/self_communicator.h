// A group of one: the Communicator of a single-process run (no MPI needed). Reductions and
// broadcasts leave the tensor as it is; reduce_scatter and all_gather copy; there is no peer to
// send to.
#pragma once

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace bvllm::parallel {

class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(std::string name = "world") : name_(std::move(name)) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }

  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output) override;
  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root) override;
  std::unique_ptr<Work> send_async(const Tensor& tensor, int peer) override;
  std::unique_ptr<Work> recv_async(Tensor& tensor, int peer) override;
  void barrier() override {}

 private:
  std::string name_;
  std::vector<int> world_ranks_{0};
};

}  // namespace bvllm::parallel
