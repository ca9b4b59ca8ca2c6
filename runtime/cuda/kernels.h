// CUDA kernels: the same signatures as runtime/cpu/kernels.h, on tensors that live on one CUDA
// device. Unlike the CPU kernels they take bf16 and f16 directly (computing in f32 registers);
// per-row statistics (norm mean/rstd, attention logsumexp, loss lse) are f32 for half inputs.
// Every launch goes to cuda::current_stream() and is checked.
//
// Only compiled with CUDA (BVLLM_WITH_CUDA); runtime/ops/common.h's BVLLM_KERNEL picks between
// these and the CPU ones, so CPU-only builds never reference them.
#pragma once

#include "runtime/cpu/kernels.h"

namespace bvllm::cuda {

using cpu::AttentionShape;
using cpu::Distribution;

// copy.cu (fill and copy also serve Tensor itself, see backend.h)
void fill(Tensor& t, double value);
void copy(const Tensor& src, Tensor& dst);  // any dtypes, any strides, same shape

// elementwise.cu
void unary(UnaryOp op, double scalar, const Tensor& x, Tensor& y);
void unary_backward(UnaryOp op, double scalar, const Tensor& x, const Tensor& y, const Tensor& gy, Tensor& gx);
void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);  // strided a, b
void compare(CompareOp op, const Tensor& a, const Tensor& b, Tensor& out);
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& gout, Tensor& ggate, Tensor& gup);

// random.cu: the same Philox streams as the CPU (element i of a draw uses the same counter).
void fill_random(Tensor& t, Generator& gen, Distribution dist, double a, double b);
void dropout_mask(Tensor& mask, Generator& gen, double p);

// reduce.cu
void sum_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& out);
void max_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& values, Tensor& indices);
void scatter_add(Tensor& out, int dim, const Tensor& index, const Tensor& src);

// gemm.cu (cuBLASLt): bf16/f16 with f32 accumulation, tf32 for f32.
void gemm_batched(const Tensor& a, const Tensor& b, Tensor& out);

// softmax.cu
void softmax(const Tensor& x, Tensor& y, bool log);
void softmax_backward(const Tensor& y, const Tensor& gy, Tensor& gx, bool log);

// norm.cu
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean, Tensor& rstd);
void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                         Tensor& gx, Tensor& gw, Tensor& gb);
void rms_norm(const Tensor& x, double eps, Tensor& normed, Tensor& rstd);
void rms_norm_backward(const Tensor& x, const Tensor& rstd, const Tensor& gnormed, Tensor& gx);

// rotary.cu
void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, ops::RotaryStyle style, bool transpose, Tensor& y);

// attention.cu: flash-attention forward/backward (the fallback where cuDNN declines a shape).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
                       Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& gout, Tensor& gq, Tensor& gk,
                        Tensor& gv);

// nn.cu
void embedding(const Tensor& weight, const Tensor& ids, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& gout, Tensor& gweight);  // deterministic
int64_t cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& lse,
                            double scale, Tensor& glogits);

// interpolate.cu
void bicubic(const Tensor& x, Tensor& y);
void bicubic_backward(const Tensor& gy, Tensor& gx);

// index.cu
void index_select(const Tensor& a, int dim, const Tensor& index, Tensor& out);
void index_add(Tensor& out, int dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& a, int dim, const Tensor& index, Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out);
void topk(const Tensor& a, int64_t k, Tensor& values, Tensor& indices);

}  // namespace bvllm::cuda
