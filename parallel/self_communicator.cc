#include "parallel/self_communicator.h"

namespace bvllm::parallel {
namespace {

class DoneWork final : public Work {
 public:
  bool test() override { return true; }
  void wait() override {}
};

void require_copyable(const Tensor& input, const Tensor& output, const char* what) {
  BVLLM_REQUIRE(input.defined() && output.defined() && input.numel() == output.numel() &&
                    input.dtype() == output.dtype() && output.is_contiguous(),
                what, " on a group of one: output must be a contiguous tensor of the input's size and dtype");
}

}  // namespace

std::unique_ptr<Work> SelfCommunicator::all_reduce_async(Tensor& tensor, ReduceOp) {
  BVLLM_REQUIRE(tensor.defined(), "all_reduce: undefined tensor");
  return std::make_unique<DoneWork>();
}

std::unique_ptr<Work> SelfCommunicator::reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp) {
  require_copyable(input, output, "reduce_scatter");
  if (output.raw_data() != input.raw_data()) output.copy_(input.reshape(output.shape()));
  return std::make_unique<DoneWork>();
}

std::unique_ptr<Work> SelfCommunicator::all_gather_async(const Tensor& input, Tensor& output) {
  require_copyable(input, output, "all_gather");
  if (output.raw_data() != input.raw_data()) output.copy_(input.reshape(output.shape()));
  return std::make_unique<DoneWork>();
}

std::unique_ptr<Work> SelfCommunicator::broadcast_async(Tensor& tensor, int root) {
  BVLLM_REQUIRE(root == 0, "broadcast: root ", root, " on a group of one");
  return std::make_unique<DoneWork>();
}

std::unique_ptr<Work> SelfCommunicator::send_async(const Tensor&, int peer) {
  throw Error(str_cat("send to rank ", peer, ": a group of one has no peer"));
}

std::unique_ptr<Work> SelfCommunicator::recv_async(Tensor&, int peer) {
  throw Error(str_cat("recv from rank ", peer, ": a group of one has no peer"));
}

}  // namespace bvllm::parallel
