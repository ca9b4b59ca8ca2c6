// Fused AdamW loops (see runtime/optim/adamw_math.h for the math).
#include "runtime/cpu/adamw.h"

#include <type_traits>

namespace bvllm::cpu {

namespace {

// Below this many elements one thread is faster than forking a team.
constexpr int64_t kParallelThreshold = 32768;

template <typename T>
void adamw_same(T* param, const T* grad, T* m, T* v, int64_t n, const optim::AdamWScalars& s) {
  const optim::AdamWCoefficients<T> c(s);
#pragma omp parallel for simd schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) optim::adamw_element(param[i], grad[i], m[i], v[i], c);
}

template <typename T>
float widen_grad(T g) {
  if constexpr (std::is_same_v<T, float>) {
    return g;
  } else {
    return to_float(g);
  }
}

inline void store(bf16* p, float x) { *p = to_bf16(x); }
inline void store(f16* p, float x) { *p = to_f16(x); }

template <typename H, typename G>
void adamw_master(float* master, H* param, const G* grad, float* m, float* v, int64_t n, const optim::AdamWScalars& s) {
  const optim::AdamWCoefficients<float> c(s);
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    optim::adamw_element(master[i], widen_grad(grad[i]), m[i], v[i], c);
    store(&param[i], master[i]);
  }
}

}  // namespace

void adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_same(param, grad, exp_avg, exp_avg_sq, n, s);
}
void adamw(double* param, const double* grad, double* exp_avg, double* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_same(param, grad, exp_avg, exp_avg_sq, n, s);
}
void adamw(float* master, bf16* param, const bf16* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_master(master, param, grad, exp_avg, exp_avg_sq, n, s);
}
void adamw(float* master, bf16* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_master(master, param, grad, exp_avg, exp_avg_sq, n, s);
}
void adamw(float* master, f16* param, const f16* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_master(master, param, grad, exp_avg, exp_avg_sq, n, s);
}
void adamw(float* master, f16* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s) {
  adamw_master(master, param, grad, exp_avg, exp_avg_sq, n, s);
}

}  // namespace bvllm::cpu
