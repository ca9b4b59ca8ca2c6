// CPU AdamW kernels: one fused pass over contiguous data per parameter tensor. The per-element
// math is optim::adamw_element (runtime/optim/adamw_math.h); these only loop.
#pragma once

#include <cstdint>

#include "runtime/half.h"
#include "runtime/optim/adamw_math.h"

namespace bvllm::cpu {

// f32 / f64 params: param, grad, exp_avg and exp_avg_sq share the param's dtype.
void adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, const optim::AdamWScalars& s);
void adamw(double* param, const double* grad, double* exp_avg, double* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s);

// bf16 / f16 params with an f32 master copy: the update runs in f32 on master, exp_avg and
// exp_avg_sq, and param receives master rounded to nearest even. The grad is the param's dtype
// or f32.
void adamw(float* master, bf16* param, const bf16* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s);
void adamw(float* master, bf16* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s);
void adamw(float* master, f16* param, const f16* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s);
void adamw(float* master, f16* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const optim::AdamWScalars& s);

}  // namespace bvllm::cpu
