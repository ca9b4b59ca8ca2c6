#include "runtime/cpu/grad_norm.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

namespace {

constexpr int64_t kBlock = 8192;

template <typename T>
double as_double(T x) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
    return to_float(x);
  } else {
    return static_cast<double>(x);
  }
}

// f(block_begin, block_end) per block, in parallel; the per-block results combined in order.
template <typename F, typename Combine>
double blocked(int64_t n, double init, F f, Combine combine) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), init);
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t b = 0; b < blocks; ++b) partial[b] = f(b * kBlock, std::min(n, (b + 1) * kBlock));
  double acc = init;
  for (double v : partial) acc = combine(acc, v);
  return acc;
}

template <typename T>
double norm_partial_typed(const T* x, int64_t n, double p) {
  auto at = [x](int64_t i) { return as_double(x[i]); };
  if (std::isinf(p)) {
    // NaN-propagating max, as torch's abs().max() propagates NaN.
    auto nan_max = [](double a, double b) { return (std::isnan(a) || a > b) ? a : b; };
    return blocked(
        n, 0.0,
        [&](int64_t lo, int64_t hi) {
          double m = 0.0;
          for (int64_t i = lo; i < hi; ++i) m = nan_max(m, std::abs(at(i)));
          return m;
        },
        [&](double a, double b) { return nan_max(a, b); });
  }
  auto plus = [](double a, double b) { return a + b; };
  if (p == 2.0) {
    return blocked(
        n, 0.0,
        [&](int64_t lo, int64_t hi) {
          double s = 0.0;
          for (int64_t i = lo; i < hi; ++i) s += at(i) * at(i);
          return s;
        },
        plus);
  }
  return blocked(
      n, 0.0,
      [&](int64_t lo, int64_t hi) {
        double s = 0.0;
        for (int64_t i = lo; i < hi; ++i) s += std::pow(std::abs(at(i)), p);
        return s;
      },
      plus);
}

}  // namespace

double norm_partial(const Tensor& x, double p) {
  CHECK(x.device().is_cpu() && x.is_contiguous()) << "norm_partial wants a contiguous CPU tensor";
  CHECK(p > 0.0) << "norm_partial: p = " << p;
  const int64_t n = x.numel();
  switch (x.dtype()) {
    case DType::F32: return norm_partial_typed(x.data<float>(), n, p);
    case DType::F64: return norm_partial_typed(x.data<double>(), n, p);
    case DType::BF16: return norm_partial_typed(x.data<bf16>(), n, p);
    case DType::F16: return norm_partial_typed(x.data<f16>(), n, p);
    default: LOG(FATAL) << "norm_partial: unsupported dtype " << dtype_name(x.dtype());
  }
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace bvllm::cpu
