// Philox-driven fills. Element i of a draw always uses the same counter values, so results do
// not depend on thread count (see runtime/rng.h).
#include <cmath>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void fill_random(Tensor& t, Generator& gen, Distribution dist, double a, double b) {
  const int64_t n = t.numel();
  // Normal draws take two uniforms per element (Box-Muller); the others take one.
  const int64_t per = dist == Distribution::Normal ? 2 : 1;
  const uint64_t first = gen.reserve(static_cast<uint64_t>(n * per));
  const Generator g = gen;
  visit_float(t.dtype(), [&]<typename T>() {
    T* p = t.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(n * 64))
    for (int64_t i = 0; i < n; ++i) {
      double u = uniform_from_u32(g.u32(first, static_cast<uint64_t>(i * per)));  // (0, 1]
      switch (dist) {
        case Distribution::Uniform:
          p[i] = static_cast<T>(a + (b - a) * (1.0 - u));  // [a, b)
          break;
        case Distribution::Normal: {
          double u2 = uniform_from_u32(g.u32(first, static_cast<uint64_t>(i * per + 1)));
          p[i] = static_cast<T>(a + b * std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * u2));
          break;
        }
        case Distribution::Gumbel: {
          // E = -log(u) ~ Exp(1); keep u below 1 so that E > 0 and -log(E) is finite.
          double e = -std::log(std::min(u, 1.0 - 1.0 / 16777216.0));
          p[i] = static_cast<T>(-std::log(e));
          break;
        }
      }
    }
  });
}

void dropout_mask(Tensor& mask, Generator& gen, double p) {
  const int64_t n = mask.numel();
  const uint64_t first = gen.reserve(static_cast<uint64_t>(n));
  const Generator g = gen;
  uint8_t* m = mask.data<uint8_t>();
#pragma omp parallel for schedule(static) if (parallel_worth(n * 64))
  for (int64_t i = 0; i < n; ++i) m[i] = uniform_from_u32(g.u32(first, static_cast<uint64_t>(i))) > p;
}

}  // namespace bvllm::cpu
