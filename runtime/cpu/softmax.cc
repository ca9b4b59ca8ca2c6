// Softmax and log-softmax over rows of the last dim (max-subtracted, accumulated in double).
#include <cmath>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void softmax(const Tensor& x, Tensor& y, bool log) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 8))
    for (int64_t r = 0; r < rows; ++r) {
      const T* in = xp + r * n;
      T* out = yp + r * n;
      T mx = -INFINITY;
      for (int64_t i = 0; i < n; ++i) mx = std::max(mx, in[i]);
      if (mx == -INFINITY) mx = 0;  // an all -inf row: exp gives zeros, not NaN from -inf - -inf
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        T e = std::exp(in[i] - mx);
        total += e;
        if (!log) out[i] = e;
      }
      if (log) {
        T lse = mx + static_cast<T>(std::log(total));
        for (int64_t i = 0; i < n; ++i) out[i] = in[i] - lse;
      } else {
        T inv = static_cast<T>(1.0 / total);
        for (int64_t i = 0; i < n; ++i) out[i] *= inv;
      }
    }
  });
}

// softmax: gx = y * (gy - sum(gy * y));  log_softmax: gx = gy - exp(y) * sum(gy).
void softmax_backward(const Tensor& y, const Tensor& gy, Tensor& gx, bool log) {
  const int64_t n = y.size(-1), rows = n ? y.numel() / n : 0;
  visit_float(y.dtype(), [&]<typename T>() {
    const T* yp = y.data<T>();
    const T* gp = gy.data<T>();
    T* out = gx.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 4))
    for (int64_t r = 0; r < rows; ++r) {
      const T* yr = yp + r * n;
      const T* gr = gp + r * n;
      T* o = out + r * n;
      double dot = 0;
      if (log) {
        for (int64_t i = 0; i < n; ++i) dot += gr[i];
        for (int64_t i = 0; i < n; ++i) o[i] = gr[i] - std::exp(yr[i]) * static_cast<T>(dot);
      } else {
        for (int64_t i = 0; i < n; ++i) dot += gr[i] * yr[i];
        for (int64_t i = 0; i < n; ++i) o[i] = yr[i] * (gr[i] - static_cast<T>(dot));
      }
    }
  });
}

}  // namespace bvllm::cpu
