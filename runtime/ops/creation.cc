// zeros/ones/full/arange and the Philox-driven random tensors.
#include <cmath>

#include "runtime/ops/common.h"

namespace bvllm::ops {

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype) {
  BVLLM_REQUIRE(step != 0, "arange: step is 0");
  int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  Tensor values = Tensor::empty({n}, DType::F64);
  double* p = values.data<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = start + static_cast<double>(i) * step;
  return values.to(dtype);
}

namespace {
// Draws in f32 (f64 for f64) on the target device, then casts: the same numbers on CPU and GPU.
Tensor random(const Shape& shape, Generator& gen, DType dtype, Device device, cpu::Distribution dist, double a,
              double b) {
  BVLLM_REQUIRE(is_floating(dtype), "random tensors must be floating point, got ", dtype_name(dtype));
  Tensor t = Tensor::empty(shape, detail::stat_dtype(dtype), device);
  BVLLM_KERNEL(device, fill_random, t, gen, dist, a, b);
  return t.to(dtype);
}
}  // namespace

Tensor uniform(const Shape& shape, Generator& gen, double low, double high, DType dtype, Device device) {
  return random(shape, gen, dtype, device, cpu::Distribution::Uniform, low, high);
}
Tensor normal(const Shape& shape, Generator& gen, double mean, double std, DType dtype, Device device) {
  return random(shape, gen, dtype, device, cpu::Distribution::Normal, mean, std);
}
Tensor gumbel(const Shape& shape, Generator& gen, DType dtype, Device device) {
  return random(shape, gen, dtype, device, cpu::Distribution::Gumbel, 0, 0);
}

Tensor cast(const Tensor& a, DType dtype) {
  detail::check_defined(a, "cast", "input");
  if (a.dtype() == dtype) return a;
  Tensor out = Tensor::empty(a.shape(), dtype, a.device());
  {
    NoGradGuard no_grad;
    out.copy_(a);
  }
  if (is_floating(dtype)) {
    DType from = a.dtype();
    record("cast", {a}, out, [from](const GradContext& ctx) { return std::vector<Tensor>{ctx.grad().to(from)}; });
  }
  return out;
}

}  // namespace bvllm::ops
