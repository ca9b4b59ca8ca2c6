#include "tests/support/zero_toy.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "runtime/optim/clip.h"
#include "runtime/rng.h"

namespace bvllm::testing {
namespace {

Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

}  // namespace

ZeroToy ZeroToy::make() {
  Generator gen{.seed = 7, .stream = 0};
  ZeroToy m;
  m.w1 = leaf(ops::normal({5, 7}, gen, 0.0, 0.5));
  m.b1 = leaf(ops::normal({5}, gen, 0.0, 0.1));
  m.w2 = leaf(ops::normal({3, 5}, gen, 0.0, 0.5));
  m.b2 = leaf(ops::normal({3}, gen, 0.0, 0.1));
  m.unused = leaf(ops::normal({4}, gen, 0.0, 0.1));
  return m;
}

std::vector<std::pair<std::string, Tensor>> ZeroToy::decay() const { return {{"w1", w1}, {"w2", w2}}; }

std::vector<std::pair<std::string, Tensor>> ZeroToy::no_decay() const {
  return {{"b1", b1}, {"b2", b2}, {"unused", unused}};
}

std::vector<Tensor> ZeroToy::all() const { return {w1, b1, w2, b2, unused}; }

Tensor ZeroToy::loss(int64_t index) const {
  Generator gen{.seed = 11, .stream = static_cast<uint64_t>(index)};
  const Tensor x = ops::normal({4, 7}, gen);
  const Tensor h = ops::tanh(ops::add(ops::matmul(x, w1.transpose(0, 1)), b1));
  const Tensor y = ops::add(ops::matmul(h, w2.transpose(0, 1)), b2);
  Tensor loss = ops::mean(ops::mul(y, y));
  if (index % 5 == 1) loss = ops::add(loss, ops::sum(ops::mul(unused, unused)));
  return loss;
}

namespace {

// A different lr multiplier per step, as a schedule gives.
double multiplier(int step) { return 1.0 - 0.1 * step; }

std::vector<Tensor> snapshot(const ZeroToy& m) {
  std::vector<Tensor> out;
  for (const Tensor& t : m.all()) out.push_back(t.detach().clone());
  return out;
}

}  // namespace

parallel::ZeroOptions zero_options(int stage, parallel::GradReduce reduce, int64_t bucket) {
  parallel::ZeroOptions o;
  o.stage = stage;
  o.reduce = reduce;
  o.bucket_elements = bucket;
  return o;
}

ZeroToyRun zero_toy_reference(int steps, int64_t per_step) {
  ZeroToy m = ZeroToy::make();
  std::vector<optim::ParamGroup> groups(2);
  for (const auto& [name, t] : m.decay()) groups[0].params.push_back(t);
  for (const auto& [name, t] : m.no_decay()) groups[1].params.push_back(t);
  groups[0].weight_decay = kZeroToyWeightDecay;
  groups[1].weight_decay = 0.0;
  optim::AdamW adamw(groups, {.lr = kZeroToyLr});
  ZeroToyRun run;
  for (int s = 0; s < steps; ++s) {
    for (int64_t j = 0; j < per_step; ++j)
      ops::mul(m.loss(s * per_step + j), 1.0 / static_cast<double>(per_step)).backward();
    run.norms.push_back(optim::clip_grad_norm(m.all(), kZeroToyClip));
    adamw.set_lr_multiplier(multiplier(s));
    adamw.step();
    adamw.zero_grad();
  }
  run.params = snapshot(m);
  return run;
}

ZeroToyRun zero_toy_zero(int steps, int64_t accum, parallel::Communicator& dp, const parallel::ZeroOptions& options) {
  ZeroToy m = ZeroToy::make();
  parallel::ZeroOptions o = options;
  o.adamw.lr = kZeroToyLr;
  parallel::ZeroOptimizer zero({{m.decay(), kZeroToyWeightDecay}, {m.no_decay(), 0.0}}, dp, dp, o);
  ZeroToyRun run;
  const int64_t n = dp.size(), r = dp.rank();
  for (int s = 0; s < steps; ++s) {
    for (int64_t j = 0; j < accum; ++j) {
      zero.begin_micro_batch(j == accum - 1);
      ops::mul(m.loss((s * accum + j) * n + r), 1.0 / static_cast<double>(accum)).backward();
      zero.end_micro_batch();
    }
    const double norm = zero.reduce_gradients();
    zero.clip_gradients(kZeroToyClip, norm);
    run.norms.push_back(norm);
    zero.step(multiplier(s));
    zero.zero_grad();
  }
  run.params = snapshot(m);
  return run;
}

}  // namespace bvllm::testing
