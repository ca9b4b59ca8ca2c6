// Bicubic resampling on the GPU, as runtime/cpu/interpolate.cc (torch's interpolate with
// mode="bicubic", align_corners=False): source coordinate (dst + 0.5) * in / out - 0.5, Keys
// cubic convolution with A = -0.75, taps outside the image clamped to the border. x [N, C, H, W]
// contiguous.
//
// The tap positions and weights are the CPU's f64 arithmetic, operation for operation, with
// explicit _rn operations so that nvcc does not fuse what the CPU rounds separately.
// Forward: a thread per output pixel, 16 taps summed in f64 in the CPU's order.
// Backward: deterministic, no atomics. A thread per input pixel gathers the outputs whose taps
//   land on it (a short range of rows and columns, found from the monotone tap positions) and
//   adds their terms in the CPU's order (output row, output column, tap row, tap column), each term
//   rounded to the f32 (f64 for f64) accumulator as the CPU's scatter rounds it; for f32 and f64
//   the result is the CPU's sum, bit for bit when the host compiler does not contract either.
#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"

namespace bvllm::cuda {

namespace {

constexpr double kA = -0.75;

// Keys' kernel for |x| <= 1 and 1 < |x| < 2, Horner form as the CPU writes it.
__device__ __forceinline__ double near_weight(double x) {
  // ((A + 2) x - (A + 3)) x x + 1
  return __dadd_rn(__dmul_rn(__dmul_rn(__dsub_rn(__dmul_rn(kA + 2, x), kA + 3), x), x), 1.0);
}
__device__ __forceinline__ double far_weight(double x) {
  // ((A x - 5 A) x + 8 A) x - 4 A
  return __dsub_rn(__dmul_rn(__dadd_rn(__dmul_rn(__dsub_rn(__dmul_rn(kA, x), 5 * kA), x), 8 * kA), x), 4 * kA);
}

struct Taps {
  int64_t index[4];  // clamped to [0, in - 1]; nondecreasing in dst
  double weight[4];
};

__device__ Taps taps(int64_t dst, int64_t in_size, int64_t out_size) {
  const double src =
      (static_cast<double>(dst) + 0.5) * static_cast<double>(in_size) / static_cast<double>(out_size) - 0.5;
  const double fl = floor(src), t = src - fl;
  Taps r;
  r.weight[0] = far_weight(t + 1);
  r.weight[1] = near_weight(t);
  r.weight[2] = near_weight(1 - t);
  r.weight[3] = far_weight(2 - t);
  for (int k = 0; k < 4; ++k) r.index[k] = min(max(static_cast<int64_t>(fl) - 1 + k, int64_t(0)), in_size - 1);
  return r;
}

// A lower bound on the first output whose taps reach input i: its largest raw tap
// floor(src) + 2 >= i needs (dst + 0.5) * in / out - 0.5 >= i - 2; one below that for rounding.
__device__ __forceinline__ int64_t first_output(int64_t i, int64_t in_size, int64_t out_size) {
  const double d = (static_cast<double>(i) - 1.5) * static_cast<double>(out_size) / static_cast<double>(in_size) - 0.5;
  return max(static_cast<int64_t>(floor(d)) - 1, int64_t(0));
}

template <typename T>
__global__ void bicubic_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes, int64_t ih, int64_t iw,
                               int64_t oh, int64_t ow) {
  BVLLM_GRID_STRIDE_LOOP(at, planes * oh * ow) {
    const int64_t ox = at % ow, oy = at / ow % oh, p = at / (ow * oh);
    const Taps ty = taps(oy, ih, oh), tx = taps(ox, iw, ow);
    const T* in = x + p * ih * iw;
    double acc = 0;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const double v = static_cast<double>(load(in + ty.index[a] * iw + tx.index[b]));
        acc = __dadd_rn(acc, __dmul_rn(__dmul_rn(ty.weight[a], tx.weight[b]), v));
      }
    store(y + at, acc);
  }
}

// gx[p, iy, ix] += sum over outputs (oy, ox) and taps (a, b) landing on (iy, ix) of wy[a] wx[b] gy.
template <typename T>
__global__ void bicubic_backward_kernel(const T* __restrict__ gy, T* __restrict__ gx, int64_t planes, int64_t ih,
                                        int64_t iw, int64_t oh, int64_t ow) {
  using A = acc_t<T>;
  BVLLM_GRID_STRIDE_LOOP(at, planes * ih * iw) {
    const int64_t ix = at % iw, iy = at / iw % ih, p = at / (iw * ih);
    const T* g = gy + p * oh * ow;
    const int64_t ox_first = first_output(ix, iw, ow);
    A acc = load(gx + at);
    for (int64_t oy = first_output(iy, ih, oh); oy < oh; ++oy) {
      const Taps ty = taps(oy, ih, oh);
      if (ty.index[0] > iy) break;  // and so for every later row
      if (ty.index[3] < iy) continue;
      for (int64_t ox = ox_first; ox < ow; ++ox) {
        const Taps tx = taps(ox, iw, ow);
        if (tx.index[0] > ix) break;
        if (tx.index[3] < ix) continue;
        const double gv = static_cast<double>(load(g + oy * ow + ox));
        for (int a = 0; a < 4; ++a) {
          if (ty.index[a] != iy) continue;
          for (int b = 0; b < 4; ++b)
            if (tx.index[b] == ix) acc = acc + static_cast<A>(__dmul_rn(__dmul_rn(ty.weight[a], tx.weight[b]), gv));
        }
      }
    }
    store(gx + at, acc);
  }
}

}  // namespace

void bicubic(const Tensor& x, Tensor& y) {
  BVLLM_REQUIRE(x.dim() == 4 && y.dim() == 4 && x.is_contiguous() && y.is_contiguous(),
                "cuda::bicubic: expected contiguous [N, C, H, W] tensors");
  const int64_t planes = x.size(0) * x.size(1), ih = x.size(2), iw = x.size(3), oh = y.size(2), ow = y.size(3);
  const int64_t total = planes * oh * ow;
  if (total == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    bicubic_kernel<T>
        <<<blocks_for(total), 256, 0, stream>>>(device_ptr<const T>(x), device_ptr<T>(y), planes, ih, iw, oh, ow);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void bicubic_backward(const Tensor& gy, Tensor& gx) {
  BVLLM_REQUIRE(gy.dim() == 4 && gx.dim() == 4 && gy.is_contiguous() && gx.is_contiguous(),
                "cuda::bicubic_backward: expected contiguous [N, C, H, W] tensors");
  const int64_t planes = gx.size(0) * gx.size(1), ih = gx.size(2), iw = gx.size(3), oh = gy.size(2), ow = gy.size(3);
  const int64_t total = planes * ih * iw;
  if (total == 0 || oh * ow == 0) return;
  cudaStream_t stream = current_stream(gx.device().index);
  visit_float(gx.dtype(), [&]<typename T>() {
    bicubic_backward_kernel<T>
        <<<blocks_for(total), 256, 0, stream>>>(device_ptr<const T>(gy), device_ptr<T>(gx), planes, ih, iw, oh, ow);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
