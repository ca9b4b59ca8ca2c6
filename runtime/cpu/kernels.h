// CPU kernels: the reference implementations. Front-ends in runtime/ops/ check arguments and
// make inputs contiguous (unless a kernel says it takes strided views); math kernels take f32 or
// f64 and write into preallocated outputs. runtime/cuda/ mirrors these signatures.
#pragma once

#include "runtime/op_kinds.h"
#include "runtime/ops.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace bvllm::cpu {

// copy.cc: any dtypes, any strides, same shape.
void fill(Tensor& t, double value);
void copy(const Tensor& src, Tensor& dst);

// elementwise.cc
void unary(UnaryOp op, double scalar, const Tensor& x, Tensor& y);
void unary_backward(UnaryOp op, double scalar, const Tensor& x, const Tensor& y, const Tensor& gy, Tensor& gx);
void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);    // strided a, b
void compare(CompareOp op, const Tensor& a, const Tensor& b, Tensor& out);  // strided a, b
// SwiGLU, out = silu(gate) * up, and its backward in one pass: contiguous tensors of one shape.
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& gout, Tensor& ggate, Tensor& gup);

// random.cc
enum class Distribution { Uniform, Normal, Gumbel };
void fill_random(Tensor& t, Generator& gen, Distribution dist, double a, double b);
void dropout_mask(Tensor& mask, Generator& gen, double p);  // u8: 1 = keep

// reduce.cc: x is contiguous [outer, n, inner].
void sum_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& out);
void max_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& values, Tensor& indices);
void scatter_add(Tensor& out, int dim, const Tensor& index, const Tensor& src);

// matmul.cc: out[b] = op(a[b]) @ op(b[b]); a, b are [batch, rows, cols] views whose last two
// dims are row- or column-major.
void gemm_batched(const Tensor& a, const Tensor& b, Tensor& out);

// softmax.cc: rows of the last dim.
void softmax(const Tensor& x, Tensor& y, bool log);
void softmax_backward(const Tensor& y, const Tensor& gy, Tensor& gx, bool log);

// norm.cc: rows of the last dim; mean and rstd are per row (f32 or f64).
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean, Tensor& rstd);
void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                         Tensor& gx, Tensor& gw, Tensor& gb);
void rms_norm(const Tensor& x, double eps, Tensor& normed, Tensor& rstd);
void rms_norm_backward(const Tensor& x, const Tensor& rstd, const Tensor& gnormed, Tensor& gx);

// rotary.cc: x [B, H, L, D]; cos/sin [Bc, L, D] with Bc 1 or B (f32/f64 like x). `transpose`
// applies the transposed rotation: the backward of the forward one.
void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, ops::RotaryStyle style, bool transpose, Tensor& y);

// attention.cc: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], mask [B, Lk] u8/bool or undefined.
struct AttentionShape {
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim;
};
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
                       Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& gout, Tensor& gq, Tensor& gk,
                        Tensor& gv);

// nn.cc
void embedding(const Tensor& weight, const Tensor& ids, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& gout, Tensor& gweight);
// Per-row loss (0 where ignored) and logsumexp; returns the number of counted rows.
int64_t cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& lse,
                            double scale, Tensor& glogits);

// interpolate.cc: x [N, C, H, W] contiguous.
void bicubic(const Tensor& x, Tensor& y);
void bicubic_backward(const Tensor& gy, Tensor& gx);

// index.cc
void index_select(const Tensor& a, int dim, const Tensor& index, Tensor& out);
void index_add(Tensor& out, int dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& a, int dim, const Tensor& index, Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out);  // strided inputs
void topk(const Tensor& a, int64_t k, Tensor& values, Tensor& indices);         // along the last dim

}  // namespace bvllm::cpu
