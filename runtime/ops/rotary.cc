// Rotary position embedding: tables from positions, and the rotation itself.
#include <cmath>

#include "runtime/ops/common.h"

namespace bvllm::ops {

std::pair<Tensor, Tensor> rotary_tables(const Tensor& positions, int64_t head_dim, double theta, RotaryStyle style) {
  BVLLM_REQUIRE(head_dim > 0 && head_dim % 2 == 0, "rotary_tables: head_dim must be even, got ", head_dim);
  BVLLM_REQUIRE(positions.dtype() == DType::I64 || positions.dtype() == DType::I32,
                "rotary_tables: positions must be integers, got ", dtype_name(positions.dtype()));
  const int64_t half = head_dim / 2;
  // inv_freq[k] = 1 / theta^(2k / D) in f32, as transformers computes it.
  std::vector<float> inv_freq(half);
  for (int64_t k = 0; k < half; ++k)
    inv_freq[k] = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * k) / static_cast<float>(head_dim));
  std::vector<int64_t> pos = positions.to_vector<int64_t>();
  Shape shape = positions.shape();
  shape.push_back(head_dim);
  Tensor cos = Tensor::empty(shape, DType::F32), sin = Tensor::empty(shape, DType::F32);
  float* cp = cos.data<float>();
  float* sp = sin.data<float>();
  for (size_t p = 0; p < pos.size(); ++p) {
    for (int64_t k = 0; k < half; ++k) {
      const float angle = static_cast<float>(pos[p]) * inv_freq[k];
      const float c = std::cos(angle), s = std::sin(angle);
      // HalfSplit: cat(freqs, freqs). Interleaved: each frequency twice in a row.
      const int64_t i = style == RotaryStyle::HalfSplit ? k : 2 * k;
      const int64_t j = style == RotaryStyle::HalfSplit ? k + half : 2 * k + 1;
      cp[p * head_dim + i] = cp[p * head_dim + j] = c;
      sp[p * head_dim + i] = sp[p * head_dim + j] = s;
    }
  }
  return {cos, sin};
}

Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, RotaryStyle style) {
  detail::check_floating(x, "rotary");
  BVLLM_REQUIRE(x.dim() == 4 && x.size(3) % 2 == 0, "rotary: x must be [B, H, L, D] with even D, got ",
                shape_str(x.shape()));
  const int64_t b = x.size(0), l = x.size(2), d = x.size(3);
  auto table = [&](const Tensor& t, const char* name) {
    detail::check_defined(t, "rotary", name);
    Tensor v = t.dim() == 2 ? t.unsqueeze(0) : t;
    BVLLM_REQUIRE(v.dim() == 3 && (v.size(0) == 1 || v.size(0) == b) && v.size(1) == l && v.size(2) == d,
                  "rotary: ", name, " must be [", l, ", ", d, "] or [", b, ", ", l, ", ", d, "], got ",
                  shape_str(t.shape()));
    BVLLM_REQUIRE(v.device() == x.device(), "rotary: ", name, " is on ", v.device().str(), ", x on ", x.device().str());
    // The CPU rotates in f32 (f64); CUDA reads the tables in x's dtype, as Qwen2 casts them to it.
    DType table_dtype = x.device().is_cuda() ? x.dtype() : detail::stat_dtype(x.dtype());
    return v.detach().to(table_dtype).contiguous();
  };
  Tensor c = table(cos, "cos"), s = table(sin, "sin");
  if (detail::widen_on_cpu(x)) {
    // Qwen2 casts the tables to the activation dtype before rotating.
    return rotary(x.to(DType::F32), c.to(x.dtype()).to(DType::F32), s.to(x.dtype()).to(DType::F32), style)
        .to(x.dtype());
  }
  Tensor xc = x.detach().contiguous();
  Tensor y = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
  BVLLM_KERNEL(xc.device(), rotary, xc, c, s, style, false, y);
  record("rotary", {x}, y, [c, s, style](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
    BVLLM_KERNEL(g.device(), rotary, g, c, s, style, true, gx);
    return std::vector<Tensor>{gx};
  });
  return y;
}

}  // namespace bvllm::ops
