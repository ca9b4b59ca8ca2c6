// Rotary position embedding. Each pair (i, j) of a head vector rotates by its table entries:
//   y_i = x_i cos_i - x_j sin_i,   y_j = x_j cos_j + x_i sin_j
// with (i, j) = (k, k + D/2) for HalfSplit and (2k, 2k + 1) for Interleaved. The transpose
//   gx_i = g_i cos_i + g_j sin_j,   gx_j = g_j cos_j - g_i sin_i
// is the backward, exact even for tables whose two halves differ.
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, ops::RotaryStyle style, bool transpose, Tensor& y) {
  const int64_t b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3), half = d / 2;
  const bool per_batch = cos.size(0) > 1;
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    const T* cp = cos.data<T>();
    const T* sp = sin.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for collapse(2) schedule(static) if (parallel_worth(b * h * l * d))
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t li = 0; li < l; ++li) {
          const int64_t row = ((bi * h + hi) * l + li) * d;
          const int64_t table = ((per_batch ? bi : 0) * l + li) * d;
          const T* in = xp + row;
          const T* c = cp + table;
          const T* s = sp + table;
          T* out = yp + row;
          for (int64_t k = 0; k < half; ++k) {
            const int64_t i = style == ops::RotaryStyle::HalfSplit ? k : 2 * k;
            const int64_t j = style == ops::RotaryStyle::HalfSplit ? k + half : 2 * k + 1;
            if (!transpose) {
              out[i] = in[i] * c[i] - in[j] * s[i];
              out[j] = in[j] * c[j] + in[i] * s[j];
            } else {
              out[i] = in[i] * c[i] + in[j] * s[j];
              out[j] = in[j] * c[j] - in[i] * s[i];
            }
          }
        }
  });
}

}  // namespace bvllm::cpu
