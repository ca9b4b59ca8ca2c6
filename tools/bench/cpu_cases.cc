// CPU cases. tests/reference/bench_torch.py does the same work in PyTorch.
#include "layers/qwen2_block.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "tools/bench/bench.h"

namespace bvllm::bench {

namespace {

Result matmul_cpu(const Options& options) {
  constexpr int64_t n = 1024;
  Generator gen{1, 0, 0};
  Tensor a = ops::normal({n, n}, gen), b = ops::normal({n, n}, gen);
  NoGradGuard no_grad;
  Result r{"matmul_cpu", time_ms(options, [&] { ops::matmul(a, b); }), {}};
  std::vector<double> sorted = r.ms;
  std::sort(sorted.begin(), sorted.end());
  r.extra["gflops"] = 2.0 * n * n * n / (sorted[sorted.size() / 2] * 1e6);
  return r;
}

// One training step of a Qwen2-shaped decoder layer: forward, backward of sum(y * g), AdamW.
Result block_train_cpu(const Options& options) {
  layers::Qwen2BlockConfig config{.hidden = 512, .heads = 8, .kv_heads = 2, .ffn = 1408};
  constexpr int64_t batch = 4, seq = 256;
  Generator gen{2, 0, 0};
  layers::Qwen2BlockWeights w = layers::Qwen2BlockWeights::init(config, gen);
  std::vector<Tensor> params;
  for (auto& [name, t] : w.named()) params.push_back(t->set_requires_grad(true));
  optim::AdamW opt(params, {.lr = 1e-4});
  Tensor x = ops::normal({batch, seq, config.hidden}, gen);
  Tensor g = ops::normal({batch, seq, config.hidden}, gen);
  auto [cos, sin] =
      ops::rotary_tables(ops::arange(0, seq), config.head_dim(), config.rope_theta, ops::RotaryStyle::HalfSplit);
  Result r{"block_train_cpu",
           time_ms(options,
                   [&] {
                     opt.zero_grad();
                     Tensor y = layers::qwen2_block(w, config, x, cos, sin);
                     ops::sum(ops::mul(y, g)).backward();
                     opt.step();
                   }),
           {}};
  r.extra["tokens"] = batch * seq;
  return r;
}

}  // namespace

const std::vector<Case>& cpu_cases() {
  static const std::vector<Case> all = {
      {"matmul_cpu", "f32 GEMM 1024x1024x1024 through OpenBLAS", matmul_cpu},
      {"block_train_cpu",
       "forward+backward+AdamW of a Qwen2 decoder layer (hidden 512, 8/2 heads, FFN 1408, seq 256, batch 4, f32)",
       block_train_cpu},
  };
  return all;
}

}  // namespace bvllm::bench
