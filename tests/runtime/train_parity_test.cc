// Ten AdamW steps (cosine schedule with warmup, grad-norm clipping) of a 2-layer MLP and of a
// tiny LM around one Qwen2 decoder layer, against PyTorch's run of the same steps
// (tests/reference/make_train_fixtures.py): losses, lrs, grad norms and final parameters must
// agree within 1e-5 relative in f32.
#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "layers/qwen2.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "runtime/optim/clip.h"
#include "runtime/optim/schedule.h"
#include "tests/support/fixtures.h"

namespace bvllm {
namespace {

using testing::Fixture;
using testing::rel_error;

constexpr int kSteps = 10, kWarmup = 3;
constexpr double kLr = 3e-3, kWeightDecay = 0.01, kMaxNorm = 1.0, kTolerance = 1e-5;

using Params = std::map<std::string, Tensor>;

Params load_params(const Fixture& f, const std::vector<std::string>& names) {
  Params p;
  for (const auto& n : names) p[n] = f["init." + n].contiguous().clone().detach().set_requires_grad(true);
  return p;
}

// Trains like the reference: matrices decay, vectors do not; lr = base * lambda(step) per step.
void train_and_compare(const Fixture& f, Params& params, const std::function<Tensor()>& loss_fn) {
  optim::ParamGroup decay, no_decay;
  std::vector<Tensor> all;
  for (auto& [name, p] : params) {
    (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
    all.push_back(p);
  }
  decay.weight_decay = kWeightDecay;
  no_decay.weight_decay = 0.0;
  optim::AdamW opt({decay, no_decay}, {.lr = kLr});
  std::vector<double> losses = f["losses"].to_vector<double>(), norms = f["grad_norms"].to_vector<double>(),
                      lrs = f["lrs"].to_vector<double>();
  for (int step = 0; step < kSteps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    opt.zero_grad();
    opt.set_lr_multiplier(optim::cosine_with_warmup_lambda(step, kWarmup, kSteps));
    Tensor loss = loss_fn();
    loss.backward();
    double norm = optim::clip_grad_norm(all, kMaxNorm);
    EXPECT_NEAR(loss.item<double>(), losses[step], kTolerance * std::abs(losses[step]));
    EXPECT_NEAR(norm, norms[step], kTolerance * std::abs(norms[step]));
    EXPECT_NEAR(opt.lr(0), lrs[step], 1e-12);
    opt.step();
  }
  for (auto& [name, p] : params) EXPECT_LT(rel_error(p, f["final." + name]), kTolerance) << name;
}

TEST(TrainParity, TwoLayerMlpMatchesPyTorch) {
  Fixture f("train_mlp");
  Params p = load_params(f, {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  Tensor x = f["input.x"], y = f["input.y"];
  train_and_compare(f, p, [&] {
    Tensor h = ops::gelu(ops::linear(x, p["fc1.weight"], p["fc1.bias"]));
    return ops::cross_entropy(ops::linear(h, p["fc2.weight"], p["fc2.bias"]), y);
  });
}

TEST(TrainParity, Qwen2DecoderBlockLmMatchesPyTorch) {
  Fixture f("train_qwen2_block");
  const layers::Qwen2Config config{.vocab_size = 48,
                                   .hidden_size = 32,
                                   .intermediate_size = 88,
                                   .num_hidden_layers = 1,
                                   .num_attention_heads = 4,
                                   .num_key_value_heads = 2,
                                   .head_dim = 8,
                                   .rms_norm_eps = 1e-6,
                                   .rope_theta = 1e6};
  layers::Qwen2DecoderLayer block(config);
  std::map<std::string, Tensor> init;
  for (const auto& [name, t] : block.named_parameters()) init[name] = f["init." + name];
  block.load_state_dict(init);
  Params p = load_params(f, {"embed_tokens.weight", "norm.weight", "lm_head.weight"});
  for (const auto& [name, t] : block.named_parameters()) p[name] = t;  // the optimizer updates the block's own

  Tensor tokens = f["input.tokens"], labels = f["input.labels"];
  const int64_t b = tokens.size(0), l = tokens.size(1);
  auto [cos, sin] =
      ops::rotary_tables(f["input.positions"], config.head_dim, config.rope_theta, ops::RotaryStyle::HalfSplit);
  train_and_compare(f, p, [&] {
    Tensor h = ops::embedding(p["embed_tokens.weight"], tokens);
    h = ops::rms_norm(block.forward(h, cos, sin), p["norm.weight"], config.rms_norm_eps);
    Tensor logits = ops::linear(h, p["lm_head.weight"]);
    return ops::cross_entropy(logits.reshape({b * l, -1}), labels.reshape({b * l}));
  });
}

}  // namespace
}  // namespace bvllm
