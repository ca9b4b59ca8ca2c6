// GPU cases (bf16). tests/reference/bench_torch_gpu.py does the same work in PyTorch. Each
// iteration ends with a device synchronize, so host timing covers the GPU work.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "layers/qwen2.h"
#include "runtime/autograd.h"
#include "runtime/cuda/backend.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "tools/bench/bench.h"

namespace bvllm::bench {

namespace {

const Device kGpu = Device::cuda(0);

void require_gpu(const char* name) {
  BVLLM_REQUIRE(cuda::available(), name, ": needs a CUDA device (this build or machine has none)");
}

Result gemm_bf16_gpu(const Options& options) {
  require_gpu("gemm_bf16_gpu");
  constexpr int64_t n = 8192;
  Generator gen{1, 0, 0};
  Tensor a = ops::normal({n, n}, gen, 0, 1, DType::BF16, kGpu), b = ops::normal({n, n}, gen, 0, 1, DType::BF16, kGpu);
  NoGradGuard no_grad;
  Result r{"gemm_bf16_gpu",
           time_ms(options,
                   [&] {
                     ops::matmul(a, b);
                     cuda::synchronize(0);
                   }),
           {}};
  r.extra["tflops"] = 2.0 * n * n * n / (median(r.ms) * 1e9);
  return r;
}

// Forward + backward of causal GQA attention: batch 4, 28 query heads, 4 KV heads, 4096, d 128.
Result attention_gpu(const Options& options) {
  require_gpu("attention_gpu");
  constexpr int64_t b = 4, hq = 28, hkv = 4, l = 4096, d = 128;
  Generator gen{2, 0, 0};
  Tensor q = ops::normal({b, hq, l, d}, gen, 0, 1, DType::BF16, kGpu).set_requires_grad(true);
  Tensor k = ops::normal({b, hkv, l, d}, gen, 0, 1, DType::BF16, kGpu).set_requires_grad(true);
  Tensor v = ops::normal({b, hkv, l, d}, gen, 0, 1, DType::BF16, kGpu).set_requires_grad(true);
  Tensor g = ops::normal({b, hq, l, d}, gen, 0, 1, DType::BF16, kGpu);
  Result r{"attention_gpu",
           time_ms(options,
                   [&] {
                     Tensor o = ops::scaled_dot_product_attention(q, k, v, {.causal = true});
                     run_backward({o}, {g});
                     cuda::synchronize(0);
                   }),
           {}};
  // Causal: half of the 4 * B * H * L^2 * D forward FLOPs; backward does 2.5x the forward.
  const double forward = 4.0 * b * hq * l * l * d / 2;
  r.extra["tflops"] = 3.5 * forward / (median(r.ms) * 1e9);
  return r;
}

// One training step of a Qwen2-7B-shaped decoder layer, bf16 weights with f32 AdamW master.
Result block_train_gpu(const Options& options) {
  require_gpu("block_train_gpu");
  const layers::Qwen2Config config{.vocab_size = 152064,
                                   .hidden_size = 3584,
                                   .intermediate_size = 18944,
                                   .num_hidden_layers = 1,
                                   .num_attention_heads = 28,
                                   .num_key_value_heads = 4,
                                   .head_dim = 128,
                                   .rope_theta = 1e6};
  constexpr int64_t batch = 1, seq = 4096;
  Generator gen{3, 0, 0};
  layers::Qwen2DecoderLayer layer(config, DType::BF16);
  layer.reset_parameters(gen, config.initializer_range);
  layer.to(kGpu);
  optim::AdamW opt(layer.parameters(), {.lr = 1e-5});
  Tensor x = ops::normal({batch, seq, config.hidden_size}, gen, 0, 1, DType::BF16, kGpu);
  Tensor g = ops::normal({batch, seq, config.hidden_size}, gen, 0, 1, DType::BF16, kGpu);
  auto [cos, sin] =
      ops::rotary_tables(ops::arange(0, seq), config.head_dim, config.rope_theta, ops::RotaryStyle::HalfSplit);
  cos = cos.to(DType::BF16).to(kGpu);
  sin = sin.to(DType::BF16).to(kGpu);
  auto step = [&] {
    opt.zero_grad();
    Tensor y = layer.forward(x, cos, sin);
    run_backward({y}, {g});
    opt.step();
    cuda::synchronize(0);
  };
  step();  // optimizer state exists before the peak is measured
  cuda::reset_peak_memory(0);
  Result r{"block_train_gpu", time_ms(options, step), {}};
  const cuda::MemoryStats m = cuda::memory_stats(0);
  r.extra["peak_allocated_gib"] = static_cast<double>(m.peak_allocated_bytes) / (1 << 30);
  r.extra["peak_reserved_gib"] = static_cast<double>(m.peak_reserved_bytes) / (1 << 30);
  r.extra["tokens_per_s"] = batch * seq / (median(r.ms) / 1e3);
  return r;
}

// A 256 MiB tensor from pageable host memory to the GPU and back (Tensor::to, so through the
// pinned staging of cuda::copy_bytes); GB/s per direction from the median of each.
Result copy_host_gpu(const Options& options) {
  require_gpu("copy_host_gpu");
  constexpr int64_t n = int64_t{64} << 20;  // f32 elements
  Generator gen{4, 0, 0};
  Tensor host = ops::uniform({n}, gen);
  std::vector<double> h2d, d2h;
  auto ms_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  };
  Result r{"copy_host_gpu",
           time_ms(options,
                   [&] {
                     auto t0 = std::chrono::steady_clock::now();
                     Tensor dev = host.to(kGpu);
                     h2d.push_back(ms_since(t0));
                     auto t1 = std::chrono::steady_clock::now();
                     Tensor back = dev.to(Device::cpu());
                     d2h.push_back(ms_since(t1));
                   }),
           {}};
  h2d.erase(h2d.begin(), h2d.end() - options.iters);  // time_ms also ran the warmup iterations
  d2h.erase(d2h.begin(), d2h.end() - options.iters);
  const double bytes = 4.0 * n;
  r.extra["h2d_gb_per_s"] = bytes / (median(h2d) * 1e6);
  r.extra["d2h_gb_per_s"] = bytes / (median(d2h) * 1e6);
  return r;
}

}  // namespace

const std::vector<Case>& gpu_cases() {
  static const std::vector<Case> all = {
      {"gemm_bf16_gpu", "bf16 GEMM 8192^3 (cuBLASLt, f32 accumulation), TFLOP/s", gemm_bf16_gpu},
      {"attention_gpu", "causal GQA attention fwd+bwd: batch 4, 28/4 heads, seq 4096, d 128, bf16", attention_gpu},
      {"block_train_gpu",
       "forward+backward+AdamW of a Qwen2-7B decoder layer (3584, 28/4 heads, FFN 18944, seq 4096, bf16), peak memory",
       block_train_gpu},
      {"copy_host_gpu", "256 MiB f32 pageable host -> GPU -> host (Tensor::to), GB/s each way", copy_host_gpu},
  };
  return all;
}

}  // namespace bvllm::bench
