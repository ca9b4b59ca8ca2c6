// Rotary position embedding (the math and the transpose are in runtime/cpu/rotary.cc):
//   y_i = x_i cos_i - x_j sin_i,   y_j = x_j cos_j + x_i sin_j
// with (i, j) = (k, k + D/2) for HalfSplit and (2k, 2k + 1) for Interleaved; `transpose` applies
//   gx_i = g_i cos_i + g_j sin_j,   gx_j = g_j cos_j - g_i sin_i.
//
// One thread per pair, consecutive threads on consecutive k, so a warp reads contiguous runs of
// x and of the tables (two runs of D/2 for HalfSplit, one strided-by-2 run for Interleaved, which
// touches the same cache lines). The tables arrive in x's dtype (runtime/ops/rotary.cc); the
// rotation is computed in f32 (f64 for f64) and rounded once.
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/kernels.h"

namespace bvllm::cuda {

namespace {

template <typename T>
__global__ void rotary_kernel(const T* x, const T* cos, const T* sin, T* y, int64_t pairs, int64_t half, int64_t len,
                              int64_t heads_len, bool per_batch, bool interleaved, bool transpose) {
  using A = acc_t<T>;
  const int64_t d = 2 * half;
  BVLLM_GRID_STRIDE_LOOP(p, pairs) {
    const int64_t row = p / half, k = p - row * half;  // row of [B, H, L]
    const int64_t l = row % len, b = row / heads_len;
    const int64_t table = ((per_batch ? b : 0) * len + l) * d;
    const int64_t i = interleaved ? 2 * k : k;
    const int64_t j = interleaved ? 2 * k + 1 : k + half;
    const A xi = load(x + row * d + i), xj = load(x + row * d + j);
    const A ci = load(cos + table + i), cj = load(cos + table + j);
    const A si = load(sin + table + i), sj = load(sin + table + j);
    if (!transpose) {
      store(y + row * d + i, xi * ci - xj * si);
      store(y + row * d + j, xj * cj + xi * sj);
    } else {
      store(y + row * d + i, xi * ci + xj * sj);
      store(y + row * d + j, xj * cj - xi * si);
    }
  }
}

}  // namespace

void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, ops::RotaryStyle style, bool transpose, Tensor& y) {
  const int64_t b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3), half = d / 2;
  const int64_t pairs = b * h * l * half;
  if (pairs == 0) return;
  const bool per_batch = cos.size(0) > 1;
  const bool interleaved = style == ops::RotaryStyle::Interleaved;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    rotary_kernel<T><<<blocks_for(pairs), 256, 0, stream>>>(device_ptr<T>(x), device_ptr<T>(cos), device_ptr<T>(sin),
                                                            device_ptr<T>(y), pairs, half, l, h * l, per_batch,
                                                            interleaved, transpose);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
