// Every op on the GPU against the CPU reference, on fresh random inputs: outputs and input
// gradients, f32 (tf32 GEMMs) within 1e-3 relative norm and bf16 within 1e-2. Device memory is
// poisoned with NaN as it is allocated, so an output element a kernel forgets to write fails.
// Skips where there is no GPU (ctest label "gpu").
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/cuda/backend.h"
#include "runtime/ops.h"

namespace bvllm {
namespace {

using Inputs = std::vector<Tensor>;
using Op = std::function<Tensor(const Inputs&)>;

// How to draw one input: a float tensor (normal or positive) or fixed integer/bool data.
struct Input {
  Shape shape;
  enum Kind { Normal, Positive, Fixed } kind = Normal;
  Tensor fixed = {};  // CPU tensor for Fixed inputs (indices, masks)
};
Input normal(Shape s) { return {std::move(s), Input::Normal}; }
Input positive(Shape s) { return {std::move(s), Input::Positive}; }
Input fixed(Tensor t) { return {t.shape(), Input::Fixed, t}; }

double relative_norm_error(const Tensor& actual, const Tensor& expected) {
  std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(e[i])) return INFINITY;  // an unwritten (poisoned) element
    if (std::isnan(a[i])) continue;
    diff += (a[i] - e[i]) * (a[i] - e[i]);
    ref += e[i] * e[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-30);
}

class CudaParity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
    cuda::set_poison_allocations(true);
  }
  void TearDown() override { cuda::set_poison_allocations(false); }

  // Runs `op` on CPU and GPU copies of the same inputs in `dtype`, then backward with the same
  // upstream gradient; compares outputs and the gradients of every float input.
  void check(const std::string& name, const std::vector<Input>& specs, const Op& op, DType dtype) {
    SCOPED_TRACE(name + " " + std::string(dtype_name(dtype)));
    const double tolerance = dtype == DType::F32 ? 1e-3 : 1e-2;
    Generator gen{static_cast<uint64_t>(std::hash<std::string>{}(name)), 0, 0};
    Inputs cpu, gpu;
    for (const Input& s : specs) {
      Tensor t = s.kind == Input::Fixed    ? s.fixed
                 : s.kind == Input::Normal ? ops::normal(s.shape, gen, 0, 1, dtype)
                                           : ops::add(ops::abs(ops::normal(s.shape, gen, 0, 1, dtype)), 0.5);
      Tensor g = t.to(Device::cuda());
      if (s.kind != Input::Fixed) {
        t.set_requires_grad(true);
        g.set_requires_grad(true);
      }
      cpu.push_back(t);
      gpu.push_back(g);
    }
    Tensor out_cpu = op(cpu), out_gpu = op(gpu);
    ASSERT_TRUE(out_gpu.device().is_cuda());
    EXPECT_LT(relative_norm_error(out_gpu, out_cpu), tolerance) << "forward";
    if (!out_cpu.requires_grad()) return;
    Tensor gout = ops::normal(out_cpu.shape(), gen, 0, 1, out_cpu.dtype());
    run_backward({out_cpu}, {gout});
    run_backward({out_gpu}, {gout.to(Device::cuda())});
    for (size_t i = 0; i < cpu.size(); ++i) {
      if (!cpu[i].requires_grad()) continue;
      ASSERT_TRUE(gpu[i].grad().defined()) << "input " << i << " got no gradient on the GPU";
      EXPECT_LT(relative_norm_error(gpu[i].grad(), cpu[i].grad()), tolerance) << "gradient of input " << i;
    }
  }

  void check_both(const std::string& name, const std::vector<Input>& specs, const Op& op) {
    check(name, specs, op, DType::F32);
    check(name, specs, op, DType::BF16);
  }
};

TEST_F(CudaParity, Elementwise) {
  check_both("add", {normal({33, 65}), normal({65})}, [](auto& x) { return ops::add(x[0], x[1]); });
  check_both("sub", {normal({4, 1, 7}), normal({3, 1})}, [](auto& x) { return ops::sub(x[0], x[1]); });
  check_both("mul", {normal({129, 31}), normal({129, 1})}, [](auto& x) { return ops::mul(x[0], x[1]); });
  check_both("div", {normal({17, 9}), positive({9})}, [](auto& x) { return ops::div(x[0], x[1]); });
  check_both("scalars", {normal({1000})}, [](auto& x) { return ops::rsub(2.0, x[0] * 3.0 + 1.0); });
  const std::vector<std::pair<std::string, Tensor (*)(const Tensor&)>> unary = {
      {"neg", ops::neg},         {"exp", ops::exp},   {"tanh", ops::tanh},
      {"sigmoid", ops::sigmoid}, {"silu", ops::silu}, {"relu", ops::relu}};
  for (const auto& [name, f] : unary) check_both(name, {normal({3000})}, [f = f](auto& x) { return f(x[0]); });
  for (auto f : {ops::log, ops::sqrt, ops::rsqrt, ops::abs})
    check_both("positive unary", {positive({3000})}, [f](auto& x) { return f(x[0]); });
  check_both("pow", {positive({3000})}, [](auto& x) { return ops::pow(x[0], 1.7); });
  check_both("gelu", {normal({3000})}, [](auto& x) { return ops::gelu(x[0]); });
  check_both("gelu_tanh", {normal({3000})}, [](auto& x) { return ops::gelu(x[0], ops::GeluApprox::Tanh); });
  check_both("strided input", {normal({64, 48})}, [](auto& x) { return ops::exp(x[0].transpose(0, 1)); });
  check_both("swiglu", {normal({37, 1408}), normal({37, 1408})}, [](auto& x) { return ops::swiglu(x[0], x[1]); });
  check_both("swiglu strided gate", {normal({64, 48}), normal({48, 64})},
             [](auto& x) { return ops::swiglu(x[0].transpose(0, 1), x[1]); });
}

TEST_F(CudaParity, CastsAndCopies) {
  for (DType to : {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I32, DType::I64, DType::Bool}) {
    check(
        "cast", {normal({5, 300})}, [to](auto& x) { return x[0].to(to).to(DType::F32); }, DType::F32);
  }
  check_both("contiguous of a slice", {normal({40, 70})}, [](auto& x) { return x[0].slice(1, 3, 70, 3).contiguous(); });
  check_both("concat", {normal({3, 50}), normal({3, 20})}, [](auto& x) { return ops::concat({x[0], x[1]}, 1); });
}

TEST_F(CudaParity, Reductions) {
  check_both("sum", {normal({7, 300, 5})}, [](auto& x) { return ops::sum(x[0], {1}); });
  check_both("sum all", {normal({100000})}, [](auto& x) { return ops::sum(x[0]); });
  check_both("mean", {normal({7, 30, 5})}, [](auto& x) { return ops::mean(x[0], {0, 2}, true); });
  check_both("max", {normal({9, 257})}, [](auto& x) { return ops::max(x[0], 1); });
  check(
      "argmax", {normal({9, 257})}, [](auto& x) { return ops::argmax(x[0], 1).to(DType::F32); }, DType::F32);
  check_both("softmax", {normal({37, 1000})}, [](auto& x) { return ops::softmax(x[0], -1); });
  check_both("log_softmax", {normal({37, 1000})}, [](auto& x) { return ops::log_softmax(x[0], -1); });
}

TEST_F(CudaParity, Matmul) {
  check_both("matmul", {normal({130, 70}), normal({70, 90})}, [](auto& x) { return ops::matmul(x[0], x[1]); });
  check_both("matmul transposed", {normal({2, 3, 40, 24}), normal({3, 56, 24})},
             [](auto& x) { return ops::matmul(x[0], x[1].transpose(-1, -2)); });
  check_both("linear", {normal({4, 33, 64}), normal({96, 64}), normal({96})},
             [](auto& x) { return ops::linear(x[0], x[1], x[2]); });
}

TEST_F(CudaParity, Norms) {
  check_both("layer_norm", {normal({6, 33, 768}), normal({768}), normal({768})},
             [](auto& x) { return ops::layer_norm(x[0], x[1], x[2], 1e-5); });
  check_both("rms_norm", {normal({6, 33, 896}), normal({896})},
             [](auto& x) { return ops::rms_norm(x[0], x[1], 1e-6); });
}

TEST_F(CudaParity, RotaryAndAttention) {
  for (auto style : {ops::RotaryStyle::HalfSplit, ops::RotaryStyle::Interleaved}) {
    auto [cos, sin] = ops::rotary_tables(ops::arange(0, 70), 64, 1e6, style);
    check_both("rotary", {normal({2, 3, 70, 64})}, [&, style = style](auto& x) {
      Device d = x[0].device();
      return ops::rotary(x[0], cos.to(d), sin.to(d), style);
    });
  }
  Tensor mask = ops::ones({2, 300}, DType::Bool);
  mask.narrow(1, 250, 50).select(0, 1).fill_(0);
  for (int64_t d : {64, 128}) {
    for (bool causal : {false, true}) {
      check_both("attention", {normal({2, 8, 200, d}), normal({2, 2, 300, d}), normal({2, 2, 300, d}), fixed(mask)},
                 [causal](auto& x) {
                   return ops::scaled_dot_product_attention(x[0], x[1], x[2],
                                                            {.causal = causal, .key_padding_mask = x[3]});
                 });
    }
  }
}

TEST_F(CudaParity, EmbeddingLossAndIndexing) {
  Tensor ids = Tensor::from<int64_t>({5, 0, 5, 999, 17, 5, 3, 0}, {2, 4});
  check_both("embedding", {normal({1000, 64}), fixed(ids)}, [](auto& x) { return ops::embedding(x[0], x[1]); });
  Tensor targets = Tensor::from<int64_t>({1, -100, 4095, 7, 7, -100});
  check_both("cross_entropy", {normal({6, 4096}), fixed(targets)},
             [](auto& x) { return ops::cross_entropy(x[0], x[1]); });
  Tensor idx = Tensor::from<int64_t>({4, 0, 4, 2});
  check_both("index_select", {normal({5, 37}), fixed(idx)}, [](auto& x) { return ops::index_select(x[0], 0, x[1]); });
  Tensor gidx = Tensor::from<int64_t>({0, 4, 1, 1, 3, 2}, {3, 2});
  check_both("gather", {normal({3, 5}), fixed(gidx)}, [](auto& x) { return ops::gather(x[0], 1, x[1]); });
  Tensor cond = Tensor::from<bool>({true, false, true, false}, {1, 4});
  check_both("where", {fixed(cond), normal({3, 4}), normal({4})}, [](auto& x) { return ops::where(x[0], x[1], x[2]); });
  check_both("topk", {normal({4, 300})}, [](auto& x) { return ops::topk(x[0], 16, -1).values; });
  check_both("cosine", {normal({7, 64}), normal({7, 64})}, [](auto& x) { return ops::cosine_similarity(x[0], x[1]); });
  check_both("bicubic", {normal({1, 3, 16, 16})}, [](auto& x) { return ops::interpolate_bicubic(x[0], 24, 24); });
}

TEST_F(CudaParity, RandomStreamsMatchTheCpu) {
  for (auto draw : {+[](Generator&g, Device d) { return ops::uniform({1001}, g, -1, 1, DType::F32, d); },
                    +[](Generator&g, Device d) { return ops::normal({1001}, g, 0, 1, DType::F32, d); },
                    +[](Generator&g, Device d) { return ops::gumbel({1001}, g, DType::F32, d); }}) {
    Generator a{123, 4, 8}, b{123, 4, 8};
    Tensor cpu = draw(a, Device::cpu()), gpu = draw(b, Device::cuda());
    EXPECT_LT(relative_norm_error(gpu, cpu), 1e-6);
    EXPECT_EQ(a.offset, b.offset);
  }
  Generator a{9, 0, 0}, b{9, 0, 0};
  Tensor x = ops::ones({4097});
  EXPECT_EQ(ops::dropout(x, 0.25, true, a).to_vector<float>(),
            ops::dropout(x.to(Device::cuda()), 0.25, true, b).to_vector<float>());
}

TEST_F(CudaParity, AllocatorReusesFreedMemory) {
  cuda::set_poison_allocations(false);
  cuda::empty_cache(0);
  const auto before = cuda::memory_stats(0);
  for (int i = 0; i < 10; ++i) Tensor t = Tensor::empty({1 << 20}, DType::F32, Device::cuda());
  const auto after = cuda::memory_stats(0);
  EXPECT_EQ(after.allocated_bytes, before.allocated_bytes);
  EXPECT_LE(after.device_mallocs - before.device_mallocs, 1);  // one segment, reused nine times
  EXPECT_GE(after.peak_allocated_bytes, int64_t{4} << 20);
}

TEST_F(CudaParity, HostDeviceCopiesRoundTripExactly) {
  // Sizes around the 64 KiB below which copies go direct and the 8 MiB staging chunks; the host
  // side starts one byte into its vector, so nothing is aligned, and the byte before must survive.
  const size_t mib = size_t{1} << 20;
  for (size_t n : {size_t{1}, size_t{65535}, size_t{65536}, 8 * mib, 8 * mib + 1, 19 * mib + 12345}) {
    SCOPED_TRACE(n);
    std::vector<uint8_t> src(n + 1), back(n + 1, 0);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
    Tensor dev = Tensor::empty({static_cast<int64_t>(n)}, DType::U8, Device::cuda());
    cuda::copy_bytes(dev.raw_data(), dev.device(), src.data() + 1, Device::cpu(), n);
    cuda::copy_bytes(back.data() + 1, Device::cpu(), dev.raw_data(), dev.device(), n);
    EXPECT_EQ(back[0], 0);
    EXPECT_TRUE(std::equal(src.begin() + 1, src.end(), back.begin() + 1));
  }
}

}  // namespace
}  // namespace bvllm
