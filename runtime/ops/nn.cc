// Softmax, norms, embedding, cross-entropy, dropout, cosine similarity, bicubic interpolation.
#include <cmath>

#include "runtime/ops/common.h"

namespace bvllm::ops {

namespace {

Tensor softmax_impl(const Tensor& a, int64_t dim, bool log, const char* name) {
  detail::check_floating(a, name);
  if (detail::widen_on_cpu(a)) return softmax_impl(a.to(DType::F32), dim, log, name).to(a.dtype());
  if (a.dim() == 0) return softmax_impl(a.reshape({1}), 0, log, name).reshape({});
  int d = normalize_dim(dim, a.dim(), name);
  if (d != a.dim() - 1) return softmax_impl(a.transpose(d, -1), -1, log, name).transpose(d, -1);
  Tensor x = a.detach().contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  BVLLM_KERNEL(x.device(), softmax, x, y, log);
  Tensor saved = y.detach();
  record(name, {a}, y, [saved, log](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
    BVLLM_KERNEL(g.device(), softmax_backward, saved, g, gx, log);
    return std::vector<Tensor>{gx};
  });
  return y;
}

}  // namespace

Tensor softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, false, "softmax"); }
Tensor log_softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, true, "log_softmax"); }

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  detail::check_floating(x, "layer_norm");
  BVLLM_REQUIRE(x.dim() >= 1, "layer_norm: input must have at least one dim");
  const int64_t n = x.size(-1);
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    detail::check_same_dtype_device(x, *p, "layer_norm");
    BVLLM_REQUIRE(p->shape() == Shape{n}, "layer_norm: weight and bias must be [", n, "], got ", shape_str(p->shape()));
  }
  if (detail::widen_on_cpu(x)) {
    auto widen = [](const Tensor& t) { return t.defined() ? t.to(DType::F32) : t; };
    return layer_norm(widen(x), widen(weight), widen(bias), eps).to(x.dtype());
  }

  Tensor xc = x.detach().contiguous();
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  const Device device = xc.device();
  Tensor y = Tensor::empty(xc.shape(), xc.dtype(), device);
  Shape row_shape(xc.shape().begin(), xc.shape().end() - 1);
  const DType stats = detail::stat_dtype(xc.dtype());
  Tensor mean = Tensor::empty(row_shape, stats, device), rstd = Tensor::empty(row_shape, stats, device);
  BVLLM_KERNEL(device, layer_norm, xc, w, b, eps, y, mean, rstd);
  record("layer_norm", {x, weight, bias}, y, [xc, w, mean, rstd, device](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gx = ctx.needs(0) ? Tensor::empty(xc.shape(), xc.dtype(), device) : Tensor();
    Tensor gw = ctx.needs(1) ? Tensor::empty(w.shape(), w.dtype(), device) : Tensor();
    Tensor gb = ctx.needs(2) ? Tensor::empty({xc.size(-1)}, xc.dtype(), device) : Tensor();
    BVLLM_KERNEL(device, layer_norm_backward, xc, w, mean, rstd, g, gx, gw, gb);
    return std::vector<Tensor>{gx, gw, gb};
  });
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  detail::check_floating(x, "rms_norm");
  detail::check_defined(weight, "rms_norm", "weight");
  BVLLM_REQUIRE(x.dim() >= 1 && weight.shape() == Shape{x.size(-1)}, "rms_norm: weight must be [", x.size(-1),
                "], got ", shape_str(weight.shape()));

  // As Qwen2RMSNorm: normalize in f32 (f64 stays f64), cast back to x's dtype, then scale.
  Tensor x32 = x.dtype() == DType::F64 ? x : x.to(DType::F32);
  Tensor xc = x32.detach().contiguous();
  Tensor normed = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
  Shape row_shape(xc.shape().begin(), xc.shape().end() - 1);
  Tensor rstd = Tensor::empty(row_shape, detail::stat_dtype(xc.dtype()), xc.device());
  BVLLM_KERNEL(xc.device(), rms_norm, xc, eps, normed, rstd);
  record("rms_norm", {x32}, normed, [xc, rstd](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    BVLLM_KERNEL(xc.device(), rms_norm_backward, xc, rstd, g, gx);
    return std::vector<Tensor>{gx};
  });
  Tensor w = weight.dtype() == x.dtype() ? weight : weight.to(x.dtype());
  return mul(normed.to(x.dtype()), w);
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  detail::check_floating(weight, "embedding");
  BVLLM_REQUIRE(weight.dim() == 2, "embedding: weight must be [vocab, hidden], got ", shape_str(weight.shape()));
  BVLLM_REQUIRE(ids.dtype() == DType::I64 || ids.dtype() == DType::I32, "embedding: ids must be i64 or i32, got ",
                dtype_name(ids.dtype()));
  BVLLM_REQUIRE(ids.device() == weight.device(), "embedding: ids are on ", ids.device().str(), ", weight on ",
                weight.device().str());
  Tensor idx = ids.to(DType::I64).contiguous();
  const int64_t vocab = weight.size(0);
  for (int64_t id : idx.to_vector<int64_t>())
    BVLLM_REQUIRE(id >= 0 && id < vocab, "embedding: id ", id, " is outside the vocabulary [0, ", vocab, ")");
  Shape out_shape = idx.shape();
  out_shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  BVLLM_KERNEL(weight.device(), embedding, weight.detach().contiguous(), idx, out);
  Shape wshape = weight.shape();
  DType dtype = weight.dtype();
  record("embedding", {weight}, out, [idx, wshape, dtype](const GradContext& ctx) {
    Tensor gw = zeros(wshape, dtype, idx.device());
    BVLLM_KERNEL(idx.device(), embedding_backward, idx, ctx.grad().contiguous(), gw);
    return std::vector<Tensor>{gw};
  });
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  detail::check_floating(logits, "cross_entropy");
  BVLLM_REQUIRE(logits.dim() == 2, "cross_entropy: logits must be [N, C], got ", shape_str(logits.shape()));
  BVLLM_REQUIRE(targets.dim() == 1 && targets.size(0) == logits.size(0), "cross_entropy: targets must be [",
                logits.size(0), "], got ", shape_str(targets.shape()));
  BVLLM_REQUIRE(targets.dtype() == DType::I64 || targets.dtype() == DType::I32,
                "cross_entropy: targets must be i64 or i32, got ", dtype_name(targets.dtype()));
  if (detail::widen_on_cpu(logits))
    return cross_entropy(logits.to(DType::F32), targets, ignore_index).to(logits.dtype());
  BVLLM_REQUIRE(targets.device() == logits.device(), "cross_entropy: targets are on ", targets.device().str(),
                ", logits on ", logits.device().str());

  Tensor x = logits.detach().contiguous();
  Tensor t = targets.to(DType::I64).contiguous();
  const int64_t classes = x.size(1);
  for (int64_t id : t.to_vector<int64_t>())
    BVLLM_REQUIRE(id == ignore_index || (id >= 0 && id < classes), "cross_entropy: target ", id, " is outside [0, ",
                  classes, ") and is not ignore_index ", ignore_index);
  const DType stats = detail::stat_dtype(x.dtype());
  Tensor loss = Tensor::empty({x.size(0)}, stats, x.device()), lse = Tensor::empty({x.size(0)}, stats, x.device());
  const int64_t counted = BVLLM_KERNEL(x.device(), cross_entropy, x, t, ignore_index, loss, lse);
  const double scale = counted ? 1.0 / static_cast<double>(counted) : 0.0;
  Tensor out = mul(sum(loss), scale).to(x.dtype());
  record("cross_entropy", {logits}, out, [x, t, lse, ignore_index, scale](const GradContext& ctx) {
    Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
    BVLLM_KERNEL(x.device(), cross_entropy_backward, x, t, ignore_index, lse, scale * ctx.grad().item<double>(), gx);
    return std::vector<Tensor>{gx};
  });
  return out;
}

Tensor dropout(const Tensor& a, double p, bool training, Generator& gen) {
  BVLLM_REQUIRE(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0) return a;
  detail::check_floating(a, "dropout");
  Tensor mask = Tensor::empty(a.shape(), DType::U8, a.device());
  BVLLM_KERNEL(a.device(), dropout_mask, mask, gen, p);
  Tensor scale = mul(mask.to(a.dtype()), 1.0 / (1.0 - p));
  return mul(a, scale);
}

Tensor cosine_similarity(const Tensor& a, const Tensor& b, int64_t dim, double eps) {
  // torch: sum(a*b) / sqrt(clamp_min(|a|^2 * |b|^2, eps^2)).
  Tensor dot = sum(mul(a, b), {dim});
  Tensor na = sum(mul(a, a), {dim}), nb = sum(mul(b, b), {dim});
  Tensor prod = mul(na, nb);
  Tensor floor = full({}, eps * eps, prod.dtype(), prod.device());
  return div(dot, sqrt(where(gt(prod, eps * eps), prod, floor.expand(prod.shape()))));
}

Tensor interpolate_bicubic(const Tensor& x, int64_t out_h, int64_t out_w) {
  detail::check_floating(x, "interpolate_bicubic");
  BVLLM_REQUIRE(x.dim() == 4, "interpolate_bicubic: input must be [N, C, H, W], got ", shape_str(x.shape()));
  BVLLM_REQUIRE(out_h > 0 && out_w > 0, "interpolate_bicubic: output size must be positive, got ", out_h, "x", out_w);
  if (detail::widen_on_cpu(x)) return interpolate_bicubic(x.to(DType::F32), out_h, out_w).to(x.dtype());
  Tensor xc = x.detach().contiguous();
  Tensor y = Tensor::empty({x.size(0), x.size(1), out_h, out_w}, x.dtype(), x.device());
  BVLLM_KERNEL(x.device(), bicubic, xc, y);
  Shape in_shape = x.shape();
  DType dtype = x.dtype();
  Device device = x.device();
  record("interpolate_bicubic", {x}, y, [in_shape, dtype, device](const GradContext& ctx) {
    Tensor gx = zeros(in_shape, dtype, device);
    BVLLM_KERNEL(device, bicubic_backward, ctx.grad().contiguous(), gx);
    return std::vector<Tensor>{gx};
  });
  return y;
}

}  // namespace bvllm::ops
