// LayerNorm and the normalization half of RMSNorm over rows of the last dim.
#include <cmath>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean, Tensor& rstd) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    const T* wp = w.defined() ? w.data<T>() : nullptr;
    const T* bp = b.defined() ? b.data<T>() : nullptr;
    T* yp = y.data<T>();
    T* mp = mean.data<T>();
    T* rp = rstd.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 4))
    for (int64_t r = 0; r < rows; ++r) {
      const T* in = xp + r * n;
      double sum = 0, sq = 0;
      for (int64_t i = 0; i < n; ++i) sum += in[i];
      const double mu = sum / n;
      for (int64_t i = 0; i < n; ++i) sq += (in[i] - mu) * (in[i] - mu);
      const T rs = static_cast<T>(1.0 / std::sqrt(sq / n + eps));
      const T m = static_cast<T>(mu);
      T* out = yp + r * n;
      for (int64_t i = 0; i < n; ++i) {
        T v = (in[i] - m) * rs;
        out[i] = (wp ? v * wp[i] : v) + (bp ? bp[i] : T(0));
      }
      mp[r] = m;
      rp[r] = rs;
    }
  });
}

// With xhat = (x - mean) * rstd and g = gy * w:
//   gx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  gw = sum_rows(gy * xhat),  gb = sum_rows(gy).
void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                         Tensor& gx, Tensor& gw, Tensor& gb) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    const T* wp = w.defined() ? w.data<T>() : nullptr;
    const T* mp = mean.data<T>();
    const T* rp = rstd.data<T>();
    const T* gp = gy.data<T>();
    if (gx.defined()) {
      T* out = gx.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 4))
      for (int64_t r = 0; r < rows; ++r) {
        const T* in = xp + r * n;
        const T* g = gp + r * n;
        double sum_g = 0, sum_gx = 0;
        for (int64_t i = 0; i < n; ++i) {
          T gi = wp ? g[i] * wp[i] : g[i];
          T xh = (in[i] - mp[r]) * rp[r];
          sum_g += gi;
          sum_gx += gi * xh;
        }
        const T mean_g = static_cast<T>(sum_g / n), mean_gx = static_cast<T>(sum_gx / n);
        for (int64_t i = 0; i < n; ++i) {
          T gi = wp ? g[i] * wp[i] : g[i];
          T xh = (in[i] - mp[r]) * rp[r];
          out[r * n + i] = rp[r] * (gi - mean_g - xh * mean_gx);
        }
      }
    }
    if (gw.defined() || gb.defined()) {
      std::vector<double> sw(n, 0.0), sb(n, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const T* in = xp + r * n;
        const T* g = gp + r * n;
        for (int64_t i = 0; i < n; ++i) {
          sw[i] += g[i] * (in[i] - mp[r]) * rp[r];
          sb[i] += g[i];
        }
      }
      if (gw.defined())
        for (int64_t i = 0; i < n; ++i) gw.data<T>()[i] = static_cast<T>(sw[i]);
      if (gb.defined())
        for (int64_t i = 0; i < n; ++i) gb.data<T>()[i] = static_cast<T>(sb[i]);
    }
  });
}

void rms_norm(const Tensor& x, double eps, Tensor& normed, Tensor& rstd) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* yp = normed.data<T>();
    T* rp = rstd.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 4))
    for (int64_t r = 0; r < rows; ++r) {
      const T* in = xp + r * n;
      double sq = 0;
      for (int64_t i = 0; i < n; ++i) sq += static_cast<double>(in[i]) * in[i];
      const T rs = static_cast<T>(1.0 / std::sqrt(sq / n + eps));
      for (int64_t i = 0; i < n; ++i) yp[r * n + i] = in[i] * rs;
      rp[r] = rs;
    }
  });
}

// y = x * rstd, rstd = (mean(x^2) + eps)^-1/2:  gx = rstd * (gy - y * mean(gy * y)).
void rms_norm_backward(const Tensor& x, const Tensor& rstd, const Tensor& gy, Tensor& gx) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    const T* rp = rstd.data<T>();
    const T* gp = gy.data<T>();
    T* out = gx.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 4))
    for (int64_t r = 0; r < rows; ++r) {
      const T* in = xp + r * n;
      const T* g = gp + r * n;
      double dot = 0;
      for (int64_t i = 0; i < n; ++i) dot += g[i] * in[i] * rp[r];
      const T mean_gy = static_cast<T>(dot / n);
      for (int64_t i = 0; i < n; ++i) out[r * n + i] = rp[r] * (g[i] - in[i] * rp[r] * mean_gy);
    }
  });
}

}  // namespace bvllm::cpu
