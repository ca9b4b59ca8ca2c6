// AdamW against torch.optim.AdamW (fixtures from tests/reference/optim_reference.py: two param
// groups, each lr schedule, clipping, a param without grad on some steps), hand-computed steps,
// bf16/f16 master copies, checkpoint state round trips and argument errors.
#include "runtime/optim/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "runtime/optim/clip.h"
#include "runtime/optim/schedule.h"
#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"

namespace bvllm::optim {
namespace {

Tensor param_from(std::initializer_list<double> values, DType dtype = DType::F64) {
  Tensor t = Tensor::from<double>(values).to(dtype).clone();
  t.set_requires_grad(true);
  return t;
}

// f64: every element within 1e-12 of the reference, relative to max(|reference|, 1e-6).
// f32: max |actual - reference| within 1e-6 of the reference's largest magnitude. Element-wise
// relative error means little there: elements near zero come from cancellation (θ·(1 − lr·λ)
// minus an update of size ~lr, or m summing grads of both signs), where one f32 rounding of the
// O(lr) terms is already ~1e-6 of the element, and roundings differ: torch's vectorized
// add_(g, alpha) may fuse (1−β1)·g + m into one FMA, and its clip coefficient comes from an f32
// norm where bvllm accumulates in f64.
void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  if (expected.dtype() == DType::F64) {
    EXPECT_LE(testing::max_rel_error(actual, expected, 1e-6), 1e-12) << what;
    return;
  }
  EXPECT_LE(testing::rel_error(actual, expected), 1e-6) << what;
}

void expect_bit_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  EXPECT_EQ(std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()), 0) << what;
}

struct FixtureCase {
  const char* dtype;
  const char* schedule;
};

class AdamWFixture : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(AdamWFixture, MatchesTorch) {
  const FixtureCase c = GetParam();
  const testing::Fixture f("optim_adamw");
  const std::string prefix = std::string(c.dtype) + "/" + c.schedule + "/";
  const bool is_f64 = std::string(c.dtype) == "f64";
  const double rtol = is_f64 ? 1e-12 : 1e-6;

  // hparams: lr, beta1, beta2, eps, weight_decay, lr1, wd1, T, warmup_ratio, W, steps.
  const std::vector<double> hp = f[prefix + "hparams"].to_vector<double>();
  const int64_t total_steps = static_cast<int64_t>(hp[7]);
  const int64_t warmup = warmup_steps_from_ratio(total_steps, hp[8]);
  EXPECT_EQ(warmup, static_cast<int64_t>(hp[9]));
  const int64_t steps = static_cast<int64_t>(hp[10]);
  const Schedule schedule{parse_schedule_kind(c.schedule), warmup, total_steps};

  const std::vector<std::string> names = {"w", "u", "b"};
  std::vector<Tensor> params;
  for (const std::string& n : names) {
    params.push_back(f[prefix + "init/" + n].clone());
    params.back().set_requires_grad(true);
  }
  AdamWOptions options{.lr = hp[0], .beta1 = hp[1], .beta2 = hp[2], .eps = hp[3], .weight_decay = hp[4]};
  AdamW adamw({ParamGroup{{params[0], params[1]}, std::nullopt, std::nullopt}, ParamGroup{{params[2]}, hp[5], hp[6]}},
              options);

  const std::vector<double> lrs = f[prefix + "lr"].to_vector<double>();
  const std::vector<double> max_norms = f[prefix + "max_norm"].to_vector<double>();
  const std::vector<double> total_norms = f[prefix + "total_norm"].to_vector<double>();
  for (int64_t k = 0; k < steps; ++k) {
    const std::string step = prefix + "step" + std::to_string(k) + "/";
    for (size_t i = 0; i < names.size(); ++i) {
      const std::string g = step + "grad/" + names[i];
      params[i].set_grad(f.has(g) ? f[g] : Tensor());
    }
    adamw.set_lr_multiplier(schedule(k));
    EXPECT_NEAR(adamw.lr(0), lrs[2 * k], 1e-15 * lrs[2 * k]) << step;
    EXPECT_NEAR(adamw.lr(1), lrs[2 * k + 1], 1e-15 * lrs[2 * k + 1]) << step;
    if (max_norms[k] >= 0) {
      const double total = clip_grad_norm(params, max_norms[k]);
      EXPECT_NEAR(total, total_norms[k], rtol * total_norms[k]) << step;
    }
    adamw.step();
    for (size_t i = 0; i < names.size(); ++i) {
      expect_close(params[i], f[step + "param/" + names[i]], step + names[i]);
    }
  }
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string s = prefix + "state/" + names[i] + "/";
    const AdamWState* st = adamw.state(params[i]);
    ASSERT_NE(st, nullptr) << names[i];
    EXPECT_EQ(st->step, f[s + "step"].item<int64_t>()) << names[i];
    expect_close(st->exp_avg, f[s + "exp_avg"], s + "exp_avg");
    expect_close(st->exp_avg_sq, f[s + "exp_avg_sq"], s + "exp_avg_sq");
  }
}

INSTANTIATE_TEST_SUITE_P(Torch, AdamWFixture,
                         ::testing::Values(FixtureCase{"f64", "constant_with_warmup"}, FixtureCase{"f64", "linear"},
                                           FixtureCase{"f64", "cosine"}, FixtureCase{"f32", "constant_with_warmup"},
                                           FixtureCase{"f32", "linear"}, FixtureCase{"f32", "cosine"}),
                         [](const auto& info) { return std::string(info.param.dtype) + "_" + info.param.schedule; });

TEST(AdamW, DefaultsAreTorchDefaults) {
  const AdamWOptions o;
  EXPECT_EQ(o.lr, 1e-3);
  EXPECT_EQ(o.beta1, 0.9);
  EXPECT_EQ(o.beta2, 0.999);
  EXPECT_EQ(o.eps, 1e-8);
  EXPECT_EQ(o.weight_decay, 1e-2);
}

// Two steps written out from the formula of research/models-formats.md §6.1.
TEST(AdamW, HandComputedSteps) {
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  Tensor p = param_from({1.0, -2.0, 0.5});
  AdamW adamw({p}, {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd});
  std::vector<double> theta = {1.0, -2.0, 0.5}, m(3, 0.0), v(3, 0.0);
  const std::vector<std::vector<double>> grads = {{0.5, 0.25, -1.0}, {-0.3, 0.75, 2.0}};
  for (int t = 1; t <= 2; ++t) {
    const std::vector<double>& g = grads[t - 1];
    p.set_grad(Tensor::from<double>(std::span<const double>(g)));
    adamw.step();
    for (int i = 0; i < 3; ++i) {
      theta[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double denom = std::sqrt(v[i]) / std::sqrt(1 - std::pow(b2, t)) + eps;
      theta[i] -= lr / (1 - std::pow(b1, t)) * m[i] / denom;
    }
    const std::vector<double> got = p.to_vector<double>();
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(got[i], theta[i], 1e-14) << "step " << t << " element " << i;
  }
  // First step closed form: m̂ = g and v̂ = g², so θ1 = θ0·(1 − lr·λ) − lr·g/(|g| + eps).
  Tensor q = param_from({1.0});
  AdamW one({q}, {.lr = lr, .weight_decay = wd});
  q.set_grad(Tensor::from<double>({0.5}));
  one.step();
  EXPECT_NEAR(q.item<double>(), 1.0 * (1 - lr * wd) - lr * 0.5 / (0.5 + 1e-8), 1e-15);
  EXPECT_EQ(one.state(q)->step, 1);
}

TEST(AdamW, SkipsParamsWithoutGrad) {
  Tensor a = param_from({1.0, 2.0});
  Tensor b = param_from({3.0, 4.0});
  AdamW adamw({a, b}, {.lr = 0.1});
  a.set_grad(Tensor::from<double>({1.0, -1.0}));
  adamw.step();
  EXPECT_NE(a.to_vector<double>(), (std::vector<double>{1.0, 2.0}));
  EXPECT_EQ(b.to_vector<double>(), (std::vector<double>{3.0, 4.0}));
  EXPECT_EQ(adamw.state(b), nullptr);
  ASSERT_NE(adamw.state(a), nullptr);
  EXPECT_EQ(adamw.state(a)->step, 1);

  a.set_grad(Tensor());
  b.set_grad(Tensor::from<double>({1.0, 1.0}));
  adamw.step();
  EXPECT_EQ(adamw.state(a)->step, 1);  // skipped: step count unchanged
  EXPECT_EQ(adamw.state(b)->step, 1);
}

TEST(AdamW, ZeroGradClearsGrads) {
  Tensor a = param_from({1.0});
  Tensor b = param_from({2.0});
  AdamW adamw({a, b});
  a.set_grad(Tensor::from<double>({1.0}));
  b.set_grad(Tensor::from<double>({1.0}));
  adamw.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

TEST(AdamW, GroupsKeepTheirOwnLrAndWeightDecay) {
  Tensor w = param_from({1.0});
  Tensor bias = param_from({1.0});
  AdamW adamw({ParamGroup{{w}, std::nullopt, std::nullopt}, ParamGroup{{bias}, 0.5, 0.0}}, {.lr = 0.1});
  EXPECT_EQ(adamw.num_groups(), 2u);
  EXPECT_EQ(adamw.lr(0), 0.1);
  EXPECT_EQ(adamw.lr(1), 0.5);
  EXPECT_EQ(adamw.weight_decay(0), 1e-2);
  EXPECT_EQ(adamw.weight_decay(1), 0.0);
  adamw.set_lr_multiplier(0.5);
  EXPECT_EQ(adamw.lr(0), 0.05);
  EXPECT_EQ(adamw.lr(1), 0.25);
  EXPECT_EQ(adamw.base_lr(1), 0.5);
  adamw.set_lr(1, 0.3);
  EXPECT_EQ(adamw.lr(1), 0.3);
  adamw.set_lr(0.2);
  EXPECT_EQ(adamw.lr(0), 0.2);
  EXPECT_EQ(adamw.lr(1), 0.2);

  // A zero gradient moves only the decaying param: θ·(1 − lr·λ), with m = 0 the Adam term is 0.
  adamw.set_lr(0.2);
  w.set_grad(Tensor::from<double>({0.0}));
  bias.set_grad(Tensor::from<double>({0.0}));
  adamw.step();
  EXPECT_DOUBLE_EQ(w.item<double>(), 1.0 - 0.2 * 1e-2);
  EXPECT_EQ(bias.item<double>(), 1.0);
}

TEST(AdamW, ZeroLrStillAdvancesMoments) {
  // The first scheduled step has λ(0) = 0 under warmup: params stay, moments and step move.
  Tensor p = param_from({1.0});
  AdamW adamw({p}, {.lr = 0.0});
  p.set_grad(Tensor::from<double>({2.0}));
  adamw.step();
  EXPECT_EQ(p.item<double>(), 1.0);
  EXPECT_EQ(adamw.state(p)->step, 1);
  EXPECT_NEAR(adamw.state(p)->exp_avg.item<double>(), 0.2, 1e-15);
}

// bf16/f16 params: the f32 master follows exactly the f32 run, and the param is the rounded master.
void check_half_master(DType half) {
  const std::vector<double> init = {1.0, -0.5, 0.25, 3.0};  // exactly representable in bf16 and f16
  Tensor p16 = Tensor::from<double>(std::span<const double>(init)).to(half).clone();
  p16.set_requires_grad(true);
  Tensor p32 = Tensor::from<double>(std::span<const double>(init)).to(DType::F32).clone();
  p32.set_requires_grad(true);
  const AdamWOptions o{.lr = 0.05, .weight_decay = 0.1};
  AdamW a16({p16}, o), a32({p32}, o);
  for (int k = 0; k < 4; ++k) {
    Tensor g = Tensor::from<double>({0.3 + k, -0.7, 0.01 * k, 1.5}).to(half);
    p16.set_grad(g);
    p32.set_grad(g.to(DType::F32));
    a16.step();
    a32.step();
  }
  const AdamWState* st = a16.state(p16);
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(st->master.dtype(), DType::F32);
  EXPECT_EQ(st->exp_avg.dtype(), DType::F32);
  expect_bit_equal(st->master, p32, "master vs f32 run");
  expect_bit_equal(st->exp_avg_sq, a32.state(p32)->exp_avg_sq, "exp_avg_sq");
  expect_bit_equal(p16, p32.to(half), "param is the rounded master");

  // f32 grads for a half param take the same path.
  Tensor q16 = Tensor::from<double>(std::span<const double>(init)).to(half).clone();
  q16.set_requires_grad(true);
  AdamW b16({q16}, o);
  q16.set_grad(Tensor::from<double>({0.3, -0.7, 0.0, 1.5}).to(DType::F32));
  b16.step();
  EXPECT_EQ(b16.state(q16)->step, 1);
  expect_bit_equal(q16, b16.state(q16)->master.to(half), "f32 grad");
}

TEST(AdamW, Bf16ParamsKeepF32Master) { check_half_master(DType::BF16); }
TEST(AdamW, F16ParamsKeepF32Master) { check_half_master(DType::F16); }

// A tensor above the kernel's threshold runs the OpenMP loop; splitting the same data into small
// tensors (serial loops) must give the same bits.
TEST(AdamW, ParallelLoopMatchesSerialChunks) {
  const int64_t n = 200000, chunk = 1000;
  Generator gen{.seed = 7};
  const Tensor init = ops::normal({n}, gen, 0.0, 1.0, DType::F32);
  Tensor big = init.clone();
  big.set_requires_grad(true);
  std::vector<Tensor> pieces;
  for (int64_t i = 0; i < n; i += chunk) {
    pieces.push_back(init.narrow(0, i, chunk).clone());
    pieces.back().set_requires_grad(true);
  }
  const AdamWOptions o{.lr = 0.01, .weight_decay = 0.1};
  AdamW a({big}, o), b(pieces, o);
  for (int k = 0; k < 3; ++k) {
    const Tensor g = ops::normal({n}, gen, 0.0, 1.0 + k, DType::F32);
    big.set_grad(g);
    for (size_t j = 0; j < pieces.size(); ++j) pieces[j].set_grad(g.narrow(0, j * chunk, chunk));
    a.step();
    b.step();
  }
  expect_bit_equal(big, ops::concat(pieces, 0), "params");
}

TEST(AdamW, StateRoundTripsThroughLoadState) {
  auto make = [] {
    Tensor p = Tensor::from<float>({0.5f, -1.0f, 2.0f, 0.125f}, {2, 2}).to(DType::BF16).clone();
    p.set_requires_grad(true);
    Tensor q = Tensor::from<double>({1.0, 2.0, 3.0}).to(DType::F32).clone();
    q.set_requires_grad(true);
    return std::vector<Tensor>{p, q};
  };
  auto grads = [](int k) {
    return std::vector<Tensor>{Tensor::from<float>({0.1f * k, -0.2f, 0.3f, 1.0f}, {2, 2}).to(DType::BF16),
                               Tensor::from<float>({1.0f, -0.5f * k, 0.25f})};
  };
  const AdamWOptions o{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95};
  std::vector<Tensor> a = make();
  AdamW opt_a(a, o);
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < 2; ++i) a[i].set_grad(grads(k)[i]);
    opt_a.step();
  }
  // Resume: fresh params holding A's values, fresh optimizer, A's state loaded.
  std::vector<Tensor> b = make();
  AdamW opt_b(b, o);
  for (int i = 0; i < 2; ++i) {
    NoGradGuard no_grad;
    b[i].copy_(a[i]);
    opt_b.load_state(b[i], *opt_a.state(a[i]));
    EXPECT_EQ(opt_b.state(b[i])->step, 2);
  }
  for (int k = 2; k < 5; ++k) {
    for (int i = 0; i < 2; ++i) {
      a[i].set_grad(grads(k)[i]);
      b[i].set_grad(grads(k)[i]);
    }
    opt_a.step();
    opt_b.step();
  }
  for (int i = 0; i < 2; ++i) {
    expect_bit_equal(a[i], b[i], "param " + std::to_string(i));
    expect_bit_equal(opt_a.state(a[i])->exp_avg, opt_b.state(b[i])->exp_avg, "exp_avg");
    EXPECT_EQ(opt_b.state(b[i])->step, 5);
  }
  // The loaded state is a copy: it does not alias A's tensors.
  EXPECT_FALSE(opt_a.state(a[1])->exp_avg.shares_storage(opt_b.state(b[1])->exp_avg));
}

TEST(AdamW, LoadStateValidates) {
  Tensor p = param_from({1.0, 2.0});
  AdamW adamw({p});
  AdamWState bad;
  bad.step = 3;
  bad.exp_avg = Tensor::from<double>({0.0, 0.0, 0.0});
  bad.exp_avg_sq = Tensor::from<double>({0.0, 0.0, 0.0});
  EXPECT_THROW(adamw.load_state(p, bad), Error);
  AdamWState ok{3, Tensor::from<double>({0.1, 0.2}), Tensor::from<double>({0.01, 0.04}), Tensor()};
  adamw.load_state(p, ok);
  EXPECT_EQ(adamw.state(p)->step, 3);
  ok.master = Tensor::from<float>({1.0f, 2.0f});  // no master for f64 params
  EXPECT_THROW(adamw.load_state(p, ok), Error);
  ok.step = -1;
  ok.master = Tensor();
  EXPECT_THROW(adamw.load_state(p, ok), Error);
  Tensor stranger = param_from({1.0, 2.0});
  EXPECT_THROW(adamw.state(stranger), Error);
}

TEST(AdamW, RejectsInvalidArguments) {
  auto p = [] { return param_from({1.0}); };
  EXPECT_THROW(AdamW({p()}, {.lr = -1e-3}), Error);
  EXPECT_THROW(AdamW({p()}, {.lr = std::nan("")}), Error);
  EXPECT_THROW(AdamW({p()}, {.beta1 = 1.0}), Error);
  EXPECT_THROW(AdamW({p()}, {.beta1 = -0.1}), Error);
  EXPECT_THROW(AdamW({p()}, {.beta2 = 1.0}), Error);
  EXPECT_THROW(AdamW({p()}, {.beta2 = 1.5}), Error);
  EXPECT_THROW(AdamW({p()}, {.eps = -1e-8}), Error);
  EXPECT_THROW(AdamW({p()}, {.weight_decay = -0.1}), Error);
  EXPECT_THROW(AdamW(std::vector<ParamGroup>{ParamGroup{{p()}, -1.0, std::nullopt}}), Error);
  EXPECT_THROW(AdamW(std::vector<ParamGroup>{ParamGroup{{p()}, std::nullopt, -1.0}}), Error);
  EXPECT_THROW(AdamW(std::vector<Tensor>{}), Error);
  EXPECT_THROW(AdamW({Tensor::from<double>({1.0})}), Error);  // does not require grad
  EXPECT_THROW(AdamW({Tensor()}), Error);
  Tensor q = p();
  EXPECT_THROW(AdamW({q, q}), Error);  // the same param twice
  EXPECT_THROW(AdamW(std::vector<ParamGroup>{ParamGroup{{q}, {}, {}}, ParamGroup{{q}, {}, {}}}), Error);
  Tensor non_leaf = q * 2.0;
  EXPECT_THROW(AdamW({non_leaf}), Error);
  Tensor wide = Tensor::from<double>({1, 2, 3, 4}, {2, 2}).clone();
  wide.set_requires_grad(true);
  Tensor strided = wide.detach().transpose(0, 1);
  strided.set_requires_grad(true);
  EXPECT_THROW(AdamW({strided}), Error);  // not contiguous

  AdamW ok({q});
  EXPECT_THROW(ok.set_lr(-0.1), Error);
  EXPECT_THROW(ok.set_lr(3, 0.1), Error);
  EXPECT_THROW(ok.set_lr_multiplier(-1.0), Error);
  EXPECT_THROW(ok.lr(1), Error);
  q.set_grad(Tensor::from<double>({1.0}).to(DType::F32));
  ok.step();  // a grad of another float dtype is converted
  EXPECT_EQ(ok.state(q)->step, 1);
}

}  // namespace
}  // namespace bvllm::optim
