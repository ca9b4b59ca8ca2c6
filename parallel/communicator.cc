#include "parallel/communicator.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::parallel {
namespace {

class OrderedReduceScatter final : public Work {
 public:
  OrderedReduceScatter(Tensor staging, Tensor output, std::vector<std::unique_ptr<Work>> transfers)
      : staging_(std::move(staging)), output_(std::move(output)), transfers_(std::move(transfers)) {}

  bool test() override {
    if (done_) return true;
    for (auto& t : transfers_)
      if (!t->test()) return false;
    finish();
    return true;
  }

  void wait() override {
    if (done_) return;
    for (auto& t : transfers_) t->wait();
    finish();
  }

 private:
  void finish() {
    NoGradGuard no_grad;
    Tensor sum = staging_.select(0, 0).clone();
    for (int64_t q = 1; q < staging_.size(0); ++q) sum = ops::add(sum, staging_.select(0, q));
    output_.copy_(sum.reshape(output_.shape()));
    transfers_.clear();
    staging_ = Tensor();
    done_ = true;
  }

  Tensor staging_, output_;
  std::vector<std::unique_ptr<Work>> transfers_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<Work> ordered_reduce_scatter_async(Communicator& comm, const Tensor& input, Tensor& output) {
  const int64_t size = comm.size(), rank = comm.rank();
  BVLLM_REQUIRE(input.dtype() == DType::F32 || input.dtype() == DType::F64, "ordered reduce_scatter of group '",
                comm.name(), "': f32 or f64, not ", dtype_name(input.dtype()));
  BVLLM_REQUIRE(input.is_contiguous() && input.numel() % size == 0 && output.numel() * size == input.numel() &&
                    output.dtype() == input.dtype(),
                "ordered reduce_scatter of group '", comm.name(), "': a contiguous input of ", size,
                " x n elements and an output of n, same dtype; got ", input.numel(), " and ", output.numel());
  const int64_t n = output.numel();
  const Tensor flat = input.reshape({input.numel()});
  Tensor staging = Tensor::empty({size, n}, input.dtype(), input.device());
  std::vector<std::unique_ptr<Work>> transfers;
  // Receives first (so no send waits on an unposted receive), in rank order on every member: MPI
  // keeps the messages between two members in order, so concurrent calls do not mix.
  for (int64_t q = 0; q < size; ++q) {
    if (q == rank) continue;
    Tensor row = staging.select(0, q);
    transfers.push_back(comm.recv_async(row, static_cast<int>(q)));
  }
  for (int64_t q = 0; q < size; ++q) {
    if (q == rank) continue;
    transfers.push_back(comm.send_async(flat.narrow(0, q * n, n), static_cast<int>(q)));
  }
  staging.select(0, rank).copy_(flat.narrow(0, rank * n, n));
  return std::make_unique<OrderedReduceScatter>(std::move(staging), output, std::move(transfers));
}

std::vector<std::string> all_gather_bytes(Communicator& comm, const std::string& mine) {
  const int64_t n = comm.size();
  Tensor length = Tensor::empty({1}, DType::I64);
  length.data<int64_t>()[0] = static_cast<int64_t>(mine.size());
  Tensor lengths = Tensor::empty({n}, DType::I64);
  comm.all_gather(length, lengths);
  const int64_t* len = lengths.data<int64_t>();
  const int64_t longest = std::max<int64_t>(1, *std::max_element(len, len + n));
  Tensor padded = Tensor::empty({longest}, DType::U8);
  std::memset(padded.raw_data(), 0, static_cast<size_t>(longest));
  std::memcpy(padded.raw_data(), mine.data(), mine.size());
  Tensor all = Tensor::empty({n * longest}, DType::U8);
  comm.all_gather(padded, all);
  std::vector<std::string> out;
  for (int64_t r = 0; r < n; ++r)
    out.emplace_back(static_cast<const char*>(all.raw_data()) + r * longest, static_cast<size_t>(len[r]));
  return out;
}

}  // namespace bvllm::parallel
