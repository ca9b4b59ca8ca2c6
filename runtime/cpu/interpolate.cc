// Bicubic resampling as torch.nn.functional.interpolate(mode="bicubic", align_corners=False):
// source coordinate (dst + 0.5) * in/out - 0.5, Keys cubic convolution with A = -0.75, and
// taps outside the image clamped to the border.
#include <algorithm>
#include <cmath>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

namespace {

constexpr double kA = -0.75;

// The four tap weights for fractional offset t in [0, 1).
void cubic_weights(double t, double w[4]) {
  auto near = [](double x) { return ((kA + 2) * x - (kA + 3)) * x * x + 1; };         // |x| <= 1
  auto far = [](double x) { return ((kA * x - 5 * kA) * x + 8 * kA) * x - 4 * kA; };  // 1 < |x| < 2
  w[0] = far(t + 1);
  w[1] = near(t);
  w[2] = near(1 - t);
  w[3] = far(2 - t);
}

struct Taps {
  int64_t index[4];
  double weight[4];
};

Taps taps(int64_t dst, int64_t in_size, int64_t out_size) {
  double src = (dst + 0.5) * static_cast<double>(in_size) / static_cast<double>(out_size) - 0.5;
  double fl = std::floor(src);
  Taps t;
  cubic_weights(src - fl, t.weight);
  for (int k = 0; k < 4; ++k) t.index[k] = std::clamp<int64_t>(static_cast<int64_t>(fl) - 1 + k, 0, in_size - 1);
  return t;
}

}  // namespace

void bicubic(const Tensor& x, Tensor& y) {
  const int64_t planes = x.size(0) * x.size(1), ih = x.size(2), iw = x.size(3), oh = y.size(2), ow = y.size(3);
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(planes * oh * ow * 16))
    for (int64_t p = 0; p < planes; ++p) {
      const T* in = xp + p * ih * iw;
      for (int64_t oy = 0; oy < oh; ++oy) {
        Taps ty = taps(oy, ih, oh);
        for (int64_t ox = 0; ox < ow; ++ox) {
          Taps tx = taps(ox, iw, ow);
          double acc = 0;
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) acc += ty.weight[a] * tx.weight[b] * in[ty.index[a] * iw + tx.index[b]];
          yp[(p * oh + oy) * ow + ox] = static_cast<T>(acc);
        }
      }
    }
  });
}

void bicubic_backward(const Tensor& gy, Tensor& gx) {
  const int64_t planes = gx.size(0) * gx.size(1), ih = gx.size(2), iw = gx.size(3), oh = gy.size(2), ow = gy.size(3);
  visit_float(gx.dtype(), [&]<typename T>() {
    const T* gp = gy.data<T>();
    T* out = gx.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(planes * oh * ow * 16))
    for (int64_t p = 0; p < planes; ++p) {
      T* plane = out + p * ih * iw;
      for (int64_t oy = 0; oy < oh; ++oy) {
        Taps ty = taps(oy, ih, oh);
        for (int64_t ox = 0; ox < ow; ++ox) {
          Taps tx = taps(ox, iw, ow);
          const double g = gp[(p * oh + oy) * ow + ox];
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b)
              plane[ty.index[a] * iw + tx.index[b]] += static_cast<T>(ty.weight[a] * tx.weight[b] * g);
        }
      }
    }
  });
}

}  // namespace bvllm::cpu
