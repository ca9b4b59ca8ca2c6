// NcclCommunicator (parallel/nccl_communicator.h) on CUDA tensors: every collective on integer
// data equals the exact result computed here and MpiCommunicator's on the same data on the CPU;
// in-place reduce_scatter and all_gather; async Work; send/recv (with two or more ranks); bf16
// all_gather; argument errors; the timeout's message and abort. One process is a world of one on
// GPU 0; under mpirun each rank takes the GPU of its local rank. Skips without NCCL in the build
// (non-CUDA builds) or without a GPU (ctest label "gpu").
#include <gtest/gtest.h>

#if BVLLM_WITH_NCCL
#include <cuda_runtime.h>  // defines: cudaLaunchHostFunc
// MPI's C API only (the C++ bindings need a library we do not link).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>  // defines: MPI_Comm_split_type

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "runtime/cuda/backend.h"
#include "runtime/cuda/stream.h"
#include "runtime/ops.h"
#include "tests/support/messages.h"
#endif

namespace bvllm::parallel {
namespace {

#if !BVLLM_WITH_NCCL

TEST(NcclCommunicator, NeedsNccl) {
  GTEST_SKIP() << "built without NCCL (a CUDA build that finds nccl.h and libnccl compiles it)";
}

#else

using bvllm::testing::error_of;

// Element i of rank r's data: small integers, exact in every dtype, and so are their sums over a
// few ranks (at most 10 per rank).
double value(int r, int64_t i) { return static_cast<double>((7 * i + 3 * r + 1) % 11); }

// n values of rank r from element `first` on, as a CPU tensor of `dtype`.
Tensor data(int r, int64_t n, DType dtype, int64_t first = 0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(r, first + i);
  return Tensor::from<double>(std::span<const double>(v.data(), v.size())).to(dtype);
}

// The reduction of element i over ranks 0..size-1.
double reduced(ReduceOp op, int size, int64_t i) {
  double out = value(0, i);
  for (int r = 1; r < size; ++r) {
    double v = value(r, i);
    out = op == ReduceOp::Sum ? out + v : op == ReduceOp::Max ? std::max(out, v) : std::min(out, v);
  }
  return out;
}

std::vector<double> values(const Tensor& t) { return t.to(Device::cpu()).to_vector<double>(); }

const char* op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : op == ReduceOp::Max ? "max" : "min"; }

// MPI for the whole binary (gtest_main owns main()), initialized only where there is a GPU to test.
class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (cuda::available()) session_ = std::make_unique<MpiSession>(&argc_, &argv_);
  }
  void TearDown() override { session_.reset(); }

 private:
  int argc_ = 0;
  char** argv_ = nullptr;
  std::unique_ptr<MpiSession> session_;
};
[[maybe_unused]] ::testing::Environment* const mpi_environment =
    ::testing::AddGlobalTestEnvironment(new MpiEnvironment);  // gtest owns it

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  // One NCCL communicator for the suite (creating one takes a while): over the MPI world, each
  // rank on the GPU of its local rank.
  static void SetUpTestSuite() {
    if (!cuda::available()) {
      skip_ = "no CUDA device";
      return;
    }
    mpi_ = MpiCommunicator::world();
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    int local_rank = 0, local_size = 1;
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
    // Creation is collective: every rank must agree to create or to skip.
    Tensor enough = Tensor::from<int32_t>({local_size <= cuda::device_count() ? 1 : 0});
    mpi_->all_reduce(enough, ReduceOp::Min);
    if (enough.item<int32_t>() == 0) {
      skip_ =
          str_cat(local_size, " ranks share a machine with ", cuda::device_count(), " GPUs; NCCL needs a GPU per rank");
      return;
    }
    device_ = local_rank;
    try {
      nccl_ = NcclCommunicator::create(*mpi_, device_);
    } catch (const Error& e) {
      create_error_ = e.what();
    }
  }
  static void TearDownTestSuite() {
    nccl_.reset();
    mpi_.reset();
  }
  void SetUp() override {
    if (!create_error_.empty()) FAIL() << "NcclCommunicator::create: " << create_error_;
    if (!nccl_) GTEST_SKIP() << skip_;
    rank_ = nccl_->rank();
    size_ = nccl_->size();
  }

  Tensor on_gpu(const Tensor& t) const { return t.to(Device::cuda(device_)); }

  static inline std::unique_ptr<MpiCommunicator> mpi_;
  static inline std::unique_ptr<NcclCommunicator> nccl_;
  static inline int device_ = 0;
  static inline std::string skip_, create_error_;
  int rank_ = 0, size_ = 1;
};

// The reductions MpiCommunicator defines (parallel/communicator.h); NCCL adds the half types.
const std::vector<DType> kMpiReducible = {DType::F32, DType::I32, DType::F64, DType::I64, DType::U8};
const std::vector<ReduceOp> kOps = {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min};

TEST_F(NcclCommunicatorTest, IsTheMpiGroup) {
  EXPECT_EQ(nccl_->rank(), mpi_->rank());
  EXPECT_EQ(nccl_->size(), mpi_->size());
  EXPECT_EQ(nccl_->name(), "world");
  EXPECT_EQ(nccl_->world_ranks(), mpi_->world_ranks());
  EXPECT_EQ(nccl_->device(), device_);
}

TEST_F(NcclCommunicatorTest, AllReduceIsExactAndMatchesMpi) {
  const int64_t n = 1003;
  for (DType dtype : {DType::F32, DType::I32, DType::F64, DType::I64, DType::U8, DType::BF16, DType::F16}) {
    for (ReduceOp op : kOps) {
      SCOPED_TRACE(str_cat(dtype_name(dtype), " ", op_name(op)));
      Tensor cpu = data(rank_, n, dtype);
      Tensor gpu = on_gpu(cpu);
      nccl_->all_reduce(gpu, op);
      std::vector<double> expected(n);
      for (int64_t i = 0; i < n; ++i) expected[i] = reduced(op, size_, i);
      const std::vector<double> got = values(gpu);
      EXPECT_EQ(got, expected);
      if (std::find(kMpiReducible.begin(), kMpiReducible.end(), dtype) == kMpiReducible.end()) continue;
      mpi_->all_reduce(cpu, op);
      EXPECT_EQ(got, values(cpu)) << "differs from MpiCommunicator";
    }
  }
}

TEST_F(NcclCommunicatorTest, ReduceScatterIsExactAndMatchesMpi) {
  const int64_t n = 333;  // per member: odd, and no power of two
  for (DType dtype : {DType::F32, DType::I32, DType::F64, DType::I64, DType::U8}) {
    for (ReduceOp op : kOps) {
      SCOPED_TRACE(str_cat(dtype_name(dtype), " ", op_name(op)));
      Tensor cpu_in = data(rank_, size_ * n, dtype);
      Tensor gpu_in = on_gpu(cpu_in);
      Tensor gpu_out = Tensor::empty({n}, dtype, Device::cuda(device_));
      nccl_->reduce_scatter(gpu_in, gpu_out, op);
      std::vector<double> expected(n);
      for (int64_t j = 0; j < n; ++j) expected[j] = reduced(op, size_, rank_ * n + j);
      const std::vector<double> got = values(gpu_out);
      EXPECT_EQ(got, expected);
      Tensor cpu_out = Tensor::empty({n}, dtype);
      mpi_->reduce_scatter(cpu_in, cpu_out, op);
      EXPECT_EQ(got, values(cpu_out)) << "differs from MpiCommunicator";

      // In place: the output is this rank's chunk of the input (what ZeRO's buckets do).
      Tensor bucket = on_gpu(cpu_in);
      Tensor shard = bucket.narrow(0, rank_ * n, n);
      nccl_->reduce_scatter(bucket, shard, op);
      EXPECT_EQ(values(shard), expected) << "in place";
    }
  }
}

TEST_F(NcclCommunicatorTest, AllGatherIsExactAndMatchesMpi) {
  const int64_t n = 257;
  for (DType dtype : {DType::F32, DType::I32, DType::I64, DType::U8, DType::Bool}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor cpu_in = data(rank_, n, dtype);
    Tensor gpu_out = Tensor::empty({size_ * n}, dtype, Device::cuda(device_));
    nccl_->all_gather(on_gpu(cpu_in), gpu_out);
    std::vector<double> expected;
    for (int r = 0; r < size_; ++r) {
      const std::vector<double> chunk = values(data(r, n, dtype));
      expected.insert(expected.end(), chunk.begin(), chunk.end());
    }
    const std::vector<double> got = values(gpu_out);
    EXPECT_EQ(got, expected);
    Tensor cpu_out = Tensor::empty({size_ * n}, dtype);
    mpi_->all_gather(cpu_in, cpu_out);
    EXPECT_EQ(got, values(cpu_out)) << "differs from MpiCommunicator";

    // In place: the input is this rank's chunk of the output.
    Tensor whole = Tensor::empty({size_ * n}, dtype, Device::cuda(device_));
    Tensor own = whole.narrow(0, rank_ * n, n);
    own.copy_(on_gpu(cpu_in));
    nccl_->all_gather(own, whole);
    EXPECT_EQ(values(whole), expected) << "in place";
  }
}

// bf16 moves bit for bit: values with a fractional part, and a 2-D output.
TEST_F(NcclCommunicatorTest, AllGatherBf16) {
  const int64_t n = 96;
  auto bf16_data = [&](int r) { return ops::add(ops::mul(data(r, n, DType::F32), 0.25), -1.25).to(DType::BF16); };
  Tensor out = Tensor::empty({size_, n}, DType::BF16, Device::cuda(device_));
  nccl_->all_gather(on_gpu(bf16_data(rank_)), out);
  ASSERT_EQ(out.dtype(), DType::BF16);
  for (int r = 0; r < size_; ++r) EXPECT_EQ(values(out.select(0, r)), values(bf16_data(r))) << "chunk " << r;
}

TEST_F(NcclCommunicatorTest, BroadcastIsExactAndMatchesMpi) {
  const int64_t n = 1001;
  for (DType dtype : {DType::F32, DType::I32, DType::BF16}) {
    for (int root : {0, size_ - 1}) {
      SCOPED_TRACE(str_cat(dtype_name(dtype), " root ", root));
      Tensor cpu = data(rank_, n, dtype);
      Tensor gpu = on_gpu(cpu);
      nccl_->broadcast(gpu, root);
      const std::vector<double> got = values(gpu);
      EXPECT_EQ(got, values(data(root, n, dtype)));
      mpi_->broadcast(cpu, root);
      EXPECT_EQ(got, values(cpu)) << "differs from MpiCommunicator";
    }
  }
}

TEST_F(NcclCommunicatorTest, SendRecv) {
  const int64_t n = 4099;
  if (size_ == 1) {
    Tensor t = on_gpu(data(0, n, DType::F32));
    EXPECT_CONTAINS(error_of([&] { nccl_->send(t, 0); }), "itself");
    EXPECT_CONTAINS(error_of([&] { nccl_->recv(t, 0); }), "itself");
    GTEST_SKIP() << "a world of one has no peer (run under mpirun with 2 or more GPUs)";
  }
  // A ring, every rank posting its send before its receive: the two are launched in one NCCL
  // group, so no rank's stream blocks on its own send.
  const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
  for (DType dtype : {DType::F32, DType::I32}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor out = on_gpu(data(rank_, n, dtype));
    Tensor in = Tensor::empty({n}, dtype, Device::cuda(device_));
    auto sent = nccl_->send_async(out, next);
    auto received = nccl_->recv_async(in, prev);
    received->wait();
    sent->wait();
    EXPECT_EQ(values(in), values(data(prev, n, dtype)));
  }
  // Blocking pairs: even ranks send first, odd ranks receive first.
  if (size_ % 2 == 0) {
    const int peer = rank_ ^ 1;
    Tensor out = on_gpu(data(rank_, n, DType::F32));
    Tensor in = Tensor::empty({n}, DType::F32, Device::cuda(device_));
    if (rank_ % 2 == 0) {
      nccl_->send(out, peer);
      nccl_->recv(in, peer);
    } else {
      nccl_->recv(in, peer);
      nccl_->send(out, peer);
    }
    EXPECT_EQ(values(in), values(data(peer, n, DType::F32)));
  }
}

TEST_F(NcclCommunicatorTest, AsyncWorkCompletesAndOrdersLaterKernels) {
  const int64_t n = 1 << 20;
  std::vector<Tensor> tensors;
  std::vector<std::unique_ptr<Work> > works;
  for (int k = 0; k < 3; ++k) {
    tensors.push_back(on_gpu(data(rank_, n, DType::F32, k)));
    works.push_back(nccl_->all_reduce_async(tensors.back()));
  }
  Tensor root_data = on_gpu(data(rank_, n, DType::I32));
  works.push_back(nccl_->broadcast_async(root_data, 0));
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (auto& w : works) {
    while (!w->test()) {
      ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "test() never turned true";
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    w->wait();  // after test() said done: returns at once
  }
  for (int k = 0; k < 3; ++k) {
    // A kernel queued after wait() sees the reduced values.
    const std::vector<double> got = values(ops::add(tensors[k], 1.0));
    for (int64_t i = 0; i < n; i += 997) ASSERT_EQ(got[i], reduced(ReduceOp::Sum, size_, k + i) + 1) << k << " " << i;
  }
  EXPECT_EQ(values(root_data), values(data(0, n, DType::I32)));

  // wait() without test(), on operations in flight together.
  Tensor a = on_gpu(data(rank_, n, DType::F32)), b = on_gpu(data(rank_, n, DType::I32));
  auto wa = nccl_->all_reduce_async(a, ReduceOp::Max);
  auto wb = nccl_->all_reduce_async(b, ReduceOp::Min);
  wb->wait();
  wa->wait();
  const std::vector<double> got_a = values(a), got_b = values(b);
  for (int64_t i = 0; i < n; i += 1009) {
    ASSERT_EQ(got_a[i], reduced(ReduceOp::Max, size_, i)) << i;
    ASSERT_EQ(got_b[i], reduced(ReduceOp::Min, size_, i)) << i;
  }
}

TEST_F(NcclCommunicatorTest, BarrierAndSequenceNumbers) {
  const int64_t before = nccl_->sequence();
  nccl_->barrier();
  nccl_->barrier();
  EXPECT_EQ(nccl_->sequence(), before + 2);
}

TEST_F(NcclCommunicatorTest, RefusesBadArguments) {
  const int64_t n = 12;
  const int64_t before = nccl_->sequence();
  Tensor cpu = data(rank_, n, DType::F32);
  EXPECT_CONTAINS(error_of([&] { nccl_->all_reduce(cpu); }), "is on cpu");
  Tensor strided = on_gpu(data(rank_, n, DType::F32).reshape({3, 4})).transpose(0, 1);
  EXPECT_CONTAINS(error_of([&] { nccl_->all_reduce(strided); }), "not contiguous");
  Tensor flags = on_gpu(data(rank_, n, DType::Bool));
  EXPECT_CONTAINS(error_of([&] { nccl_->all_reduce(flags); }), "not bool");

  Tensor input = on_gpu(data(rank_, size_ * n, DType::F32));
  Tensor wrong_size = Tensor::empty({n + 1}, DType::F32, Device::cuda(device_));
  EXPECT_CONTAINS(error_of([&] { nccl_->reduce_scatter(input, wrong_size); }), "expected");
  Tensor wrong_dtype = Tensor::empty({n}, DType::I32, Device::cuda(device_));
  EXPECT_CONTAINS(error_of([&] { nccl_->reduce_scatter(input, wrong_dtype); }), "output is i32");
  if (size_ > 1) {
    Tensor ragged = on_gpu(data(rank_, size_ * n + 1, DType::F32));
    EXPECT_CONTAINS(error_of([&] { nccl_->reduce_scatter(ragged, wrong_size); }), "do not divide");
  }
  // An output that overlaps the input anywhere but this rank's chunk.
  Tensor buffer = on_gpu(data(rank_, size_ * n + 1, DType::F32));
  Tensor shifted = buffer.narrow(0, rank_ * n + 1, n);
  EXPECT_CONTAINS(error_of([&] { nccl_->reduce_scatter(buffer.narrow(0, 0, size_ * n), shifted); }), "overlaps");
  Tensor gathered = Tensor::empty({size_ * n + 1}, DType::F32, Device::cuda(device_));
  EXPECT_CONTAINS(error_of([&] { nccl_->all_gather(input.narrow(0, 0, n), gathered); }), "expected");

  Tensor t = on_gpu(cpu);
  EXPECT_CONTAINS(error_of([&] { nccl_->broadcast(t, size_); }), "is not a rank");
  EXPECT_CONTAINS(error_of([&] { nccl_->send(t, -1); }), "is not a rank");
  if (cuda::device_count() > 1) {
    Tensor elsewhere = data(rank_, n, DType::F32).to(Device::cuda((device_ + 1) % cuda::device_count()));
    EXPECT_CONTAINS(error_of([&] { nccl_->all_reduce(elsewhere); }), str_cat("serves cuda:", device_));
  }

  // Refused calls issue nothing: every rank's sequence stays aligned and the communicator works.
  EXPECT_EQ(nccl_->sequence(), before);
  nccl_->all_reduce(t);
  EXPECT_EQ(values(t)[0], reduced(ReduceOp::Sum, size_, 0));
}

// Holds a stream's work for `ms` milliseconds on the host.
void CUDART_CB sleep_on_stream(void* ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(*static_cast<int*>(ms)));
}

// Last in the file: it aborts a communicator of its own. The collective cannot start while the
// caller's stream is held for a second, so wait() gives up after 100 ms with the message the
// contract asks for, and the aborted communicator refuses further calls. A world of one only: with
// peers, NCCL kernels would start on the aborted communicator once the hold ends, which a job never
// does (it ends at the first CommError) and which could spoil the CUDA context for later tests.
TEST_F(NcclCommunicatorTest, TimeoutNamesTheOperationAndAborts) {
  if (size_ > 1) GTEST_SKIP() << "a world of one only (see the comment)";
  std::unique_ptr<NcclCommunicator> comm = NcclCommunicator::create(*mpi_, device_);
  Tensor t = on_gpu(data(rank_, 1000, DType::F32));
  comm->all_reduce(t);  // NCCL connects on first use: not what this test times
  comm->set_timeout(std::chrono::milliseconds(100));
  static int hold_ms = 1000;
  ASSERT_EQ(cudaLaunchHostFunc(cuda::current_stream(device_), sleep_on_stream, &hold_ms), cudaSuccess);
  const int64_t seq = comm->sequence();
  auto work = comm->all_reduce_async(t);
  std::string message = "(no CommError)";
  try {
    work->wait();
  } catch (const CommError& e) {
    message = e.what();
  }
  EXPECT_CONTAINS(message, str_cat("all_reduce #", seq));
  EXPECT_CONTAINS(message, "rank 0 (world rank 0) of group 'world'");
  EXPECT_CONTAINS(message, "did not complete within 100 ms");
  EXPECT_CONTAINS(message, "cannot tell which members");
  EXPECT_THROW(comm->all_reduce(t), CommError);
  cuda::synchronize(device_);  // the held stream drains
}

#endif  // BVLLM_WITH_NCCL

}  // namespace
}  // namespace bvllm::parallel
