// The op surface: plain functions on Tensors. Each checks its arguments (errors say what was
// expected), picks the kernel by device, and records an autograd node when an input requires grad.
// CPU kernels are the reference (runtime/cpu/); bf16 and f16 are computed through f32 there.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace bvllm::ops {

// --- creation (runtime/ops/creation.cc) -----------------------------------------------------
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::I64);
// Philox draws keyed by the generator's (seed, offset): the same values however work is split.
Tensor uniform(const Shape& shape, Generator& gen, double low = 0.0, double high = 1.0, DType dtype = DType::F32,
               Device device = Device::cpu());
Tensor normal(const Shape& shape, Generator& gen, double mean = 0.0, double std = 1.0, DType dtype = DType::F32,
              Device device = Device::cpu());
// Standard Gumbel noise -log(E), E ~ Exp(1) (as torch.nn.functional.gumbel_softmax draws it).
Tensor gumbel(const Shape& shape, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());

// --- elementwise (runtime/ops/elementwise.cc) -----------------------------------------------
// Binary ops broadcast; both operands must share dtype and device.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor rsub(double s, const Tensor& a);  // s - a
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor pow(const Tensor& a, double exponent);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor silu(const Tensor& a);
// silu(gate) * up (the SwiGLU of Qwen2/LLaMA MLPs) in one kernel; gate and up have one shape.
// Saves gate and up for backward, one activation fewer than silu then mul.
Tensor swiglu(const Tensor& gate, const Tensor& up);
enum class GeluApprox { None, Tanh };  // None: x * Phi(x) with erf; Tanh: the GPT-2 form
Tensor gelu(const Tensor& a, GeluApprox approx = GeluApprox::None);
Tensor relu(const Tensor& a);
Tensor abs(const Tensor& a);
// Comparisons give bool tensors (no gradient).
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, double s);
Tensor lt(const Tensor& a, double s);

// --- reductions (runtime/ops/reduce.cc) -------------------------------------------------------
Tensor sum(const Tensor& a);  // all elements -> 0-d
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor max(const Tensor& a, int64_t dim, bool keepdim = false);     // values (gradient to argmax)
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);  // i64
// Sums broadcast dims away so that a gradient matches `shape` (the reverse of expand).
Tensor sum_to(const Tensor& a, const Shape& shape);

// --- matrix products (runtime/ops/matmul.cc) ------------------------------------------------
// a [..., M, K] @ b [..., K, N], batch dims broadcast. Transposed views go to BLAS without copies.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in] @ weight[out, in]^T + bias[out] (torch.nn.functional.linear).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// --- normalization and activations over a dim (runtime/ops/nn.cc) ----------------------------
Tensor softmax(const Tensor& a, int64_t dim);
Tensor log_softmax(const Tensor& a, int64_t dim);
// Over the last dim; weight and bias may be undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
// Qwen2RMSNorm: y = x * rsqrt(mean(x^2) + eps) in f32, cast back to x's dtype, then * weight.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// --- rotary position embedding (runtime/ops/rotary.cc) ---------------------------------------
enum class RotaryStyle {
  HalfSplit,    // Qwen2/LLaMA: pairs (j, j + D/2)
  Interleaved,  // EVA02: pairs (2j, 2j + 1)
};
// cos/sin tables [..., L, D] for positions [..., L] (i64) with inv_freq[j] = theta^(-2j/D),
// computed in f32 and laid out for `style`.
std::pair<Tensor, Tensor> rotary_tables(const Tensor& positions, int64_t head_dim, double theta, RotaryStyle style);
// x [B, H, L, D] rotated by cos/sin [L, D] or [B, L, D]: x*cos + rotate(x)*sin.
Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, RotaryStyle style);

// --- attention (runtime/ops/attention.cc) ----------------------------------------------------
struct AttentionOptions {
  bool causal = false;               // query i sees keys j <= i + (Lk - Lq) (bottom-right, as with a KV cache)
  Tensor key_padding_mask = {};      // optional bool [B, Lk]: true = attend
  std::optional<double> scale = {};  // default 1/sqrt(D)
};
// q [B, Hq, Lq, D]; k, v [B, Hkv, Lk, D] with Hq % Hkv == 0 (query head h uses kv head h/(Hq/Hkv)).
// Computed blockwise with an online softmax: memory grows with L, not L^2, per head.
// Rows with no visible key give zeros.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options = {});

// --- embeddings and losses (runtime/ops/nn.cc) -----------------------------------------------
Tensor embedding(const Tensor& weight, const Tensor& ids);  // weight [V, H], ids i64/i32 [...]
// logits [N, C], targets [N] (i64): mean over targets != ignore_index (0 when none count).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
Tensor dropout(const Tensor& a, double p, bool training, Generator& gen);
Tensor cosine_similarity(const Tensor& a, const Tensor& b, int64_t dim = -1, double eps = 1e-8);
// x [N, C, H, W] -> [N, C, out_h, out_w]; bicubic with A = -0.75, align_corners=false, clamped
// borders (torch.nn.functional.interpolate(mode="bicubic")).
Tensor interpolate_bicubic(const Tensor& x, int64_t out_h, int64_t out_w);

// --- joining, splitting, indexing (runtime/ops/index.cc) -----------------------------------
Tensor concat(const std::vector<Tensor>& tensors, int64_t dim);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim);
Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& a, int64_t dim, const Tensor& index);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);
struct TopK {
  Tensor values;
  Tensor indices;  // i64
};
// Largest k along dim, sorted descending; ties keep the lower index first.
TopK topk(const Tensor& a, int64_t k, int64_t dim = -1);

// --- dtype and copies ------------------------------------------------------------------------
Tensor cast(const Tensor& a, DType dtype);

}  // namespace bvllm::ops

namespace bvllm {
// Arithmetic operators for readable model code.
inline Tensor operator+(const Tensor& a, const Tensor& b) { return ops::add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return ops::sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return ops::mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return ops::div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return ops::add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return ops::add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return ops::mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return ops::mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return ops::mul(a, 1.0 / s); }
inline Tensor operator-(const Tensor& a) { return ops::neg(a); }
}  // namespace bvllm
