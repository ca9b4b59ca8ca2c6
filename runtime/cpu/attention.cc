// Scaled-dot-product attention, blockwise (FlashAttention-2, Dao 2023, algorithms 1 and 2, on the
// CPU): a query block meets key blocks one at a time with an online softmax, so per head only a
// [block_q, block_k] score tile exists, never [Lq, Lk]. The forward saves the row logsumexp;
// the backward recomputes each tile's probabilities from it:
//   P = exp(S - lse),  dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
//   dQ += scale * dS K,  dK += scale * dS^T Q.
// Query head h reads kv head h / (Hq / Hkv) (grouped-query attention).
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/cpu/blas.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 128;

AttentionShape shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

// Visibility of key j from query i: the causal rule (bottom-right aligned) and the padding mask.
struct Visibility {
  bool causal;
  int64_t shift;     // Lk - Lq
  const bool* keep;  // [Lk] for this batch row, or null
  bool visible(int64_t i, int64_t j) const { return (!causal || j <= i + shift) && (!keep || keep[j]); }
  // Last key any query in [q0, q1) may see, plus one (for skipping whole key blocks).
  int64_t key_end(int64_t q1, int64_t lk) const { return causal ? std::min(lk, q1 + shift) : lk; }
};

// Writes scale * Q_blk K_blk^T into s, then -inf where not visible.
template <typename T>
void scores(const T* q, const T* k, int64_t q0, int64_t nq, int64_t k0, int64_t nk, int64_t d, T scale,
            const Visibility& vis, T* s) {
  gemm<T>(false, true, nq, nk, d, scale, q + q0 * d, d, k + k0 * d, d, T(0), s, nk);
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j)
      if (!vis.visible(q0 + i, k0 + j)) s[i * nk + j] = -std::numeric_limits<T>::infinity();
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
                       Tensor& out, Tensor& lse) {
  const AttentionShape a = shape_of(q, k);
  const int64_t rep = a.q_heads / a.kv_heads, q_blocks = (a.q_len + kBlockQ - 1) / kBlockQ;
  const bool* keep = mask.defined() ? mask.data<bool>() : nullptr;
  visit_float(q.dtype(), [&]<typename T>() {
    const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
    T* op = out.data<T>();
    T* lp = lse.data<T>();
    const int64_t d = a.head_dim;
#pragma omp parallel
    {
      std::vector<T> s(kBlockQ * kBlockK), acc(kBlockQ * d), m(kBlockQ), l(kBlockQ);
#pragma omp for collapse(3) schedule(dynamic)
      for (int64_t b = 0; b < a.batch; ++b)
        for (int64_t h = 0; h < a.q_heads; ++h)
          for (int64_t qb = 0; qb < q_blocks; ++qb) {
            const T* qh = qp + (b * a.q_heads + h) * a.q_len * d;
            const T* kh = kp + (b * a.kv_heads + h / rep) * a.kv_len * d;
            const T* vh = vp + (b * a.kv_heads + h / rep) * a.kv_len * d;
            const Visibility vis{causal, a.kv_len - a.q_len, keep ? keep + b * a.kv_len : nullptr};
            const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, a.q_len - q0);
            std::fill(acc.begin(), acc.end(), T(0));
            std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
            std::fill(l.begin(), l.end(), T(0));
            const int64_t k_end = vis.key_end(q0 + nq, a.kv_len);
            for (int64_t k0 = 0; k0 < k_end; k0 += kBlockK) {
              const int64_t nk = std::min(kBlockK, k_end - k0);
              scores(qh, kh, q0, nq, k0, nk, d, static_cast<T>(scale), vis, s.data());
              for (int64_t i = 0; i < nq; ++i) {
                T* row = s.data() + i * nk;
                T mx = m[i];
                for (int64_t j = 0; j < nk; ++j) mx = std::max(mx, row[j]);
                if (mx == -std::numeric_limits<T>::infinity()) {
                  for (int64_t j = 0; j < nk; ++j) row[j] = T(0);  // nothing visible yet
                  continue;
                }
                const T correction = std::exp(m[i] - mx);
                T sum = 0;
                for (int64_t j = 0; j < nk; ++j) {
                  row[j] = std::exp(row[j] - mx);
                  sum += row[j];
                }
                l[i] = l[i] * correction + sum;
                m[i] = mx;
                T* acc_row = acc.data() + i * d;
                for (int64_t c = 0; c < d; ++c) acc_row[c] *= correction;
              }
              gemm<T>(false, false, nq, d, nk, T(1), s.data(), nk, vh + k0 * d, d, T(1), acc.data(), d);
            }
            T* oh = op + ((b * a.q_heads + h) * a.q_len + q0) * d;
            T* lh = lp + (b * a.q_heads + h) * a.q_len + q0;
            for (int64_t i = 0; i < nq; ++i) {
              const T inv = l[i] > 0 ? T(1) / l[i] : T(0);
              for (int64_t c = 0; c < d; ++c) oh[i * d + c] = acc[i * d + c] * inv;
              lh[i] = l[i] > 0 ? m[i] + std::log(l[i]) : -std::numeric_limits<T>::infinity();
            }
          }
    }
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& gout, Tensor& gq, Tensor& gk,
                        Tensor& gv) {
  const AttentionShape a = shape_of(q, k);
  const int64_t rep = a.q_heads / a.kv_heads, d = a.head_dim;
  const bool* keep = mask.defined() ? mask.data<bool>() : nullptr;
  visit_float(q.dtype(), [&]<typename T>() {
    const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>(), *op = out.data<T>(), *lp = lse.data<T>(),
            *gp = gout.data<T>();
    T *gqp = gq.data<T>(), *gkp = gk.data<T>(), *gvp = gv.data<T>();
    const T sc = static_cast<T>(scale);
    // One task per (batch, kv head): it owns dK and dV of that head and dQ of its query heads.
#pragma omp parallel
    {
      std::vector<T> p(kBlockQ * kBlockK), dp(kBlockQ * kBlockK), delta(kBlockQ);
#pragma omp for collapse(2) schedule(dynamic)
      for (int64_t b = 0; b < a.batch; ++b)
        for (int64_t kvh = 0; kvh < a.kv_heads; ++kvh) {
          const int64_t kv_off = (b * a.kv_heads + kvh) * a.kv_len * d;
          const T* kh = kp + kv_off;
          const T* vh = vp + kv_off;
          T* gkh = gkp + kv_off;
          T* gvh = gvp + kv_off;
          std::fill(gkh, gkh + a.kv_len * d, T(0));
          std::fill(gvh, gvh + a.kv_len * d, T(0));
          const Visibility vis{causal, a.kv_len - a.q_len, keep ? keep + b * a.kv_len : nullptr};
          for (int64_t h = kvh * rep; h < (kvh + 1) * rep; ++h) {
            const int64_t q_off = (b * a.q_heads + h) * a.q_len * d;
            const T *qh = qp + q_off, *oh = op + q_off, *goh = gp + q_off;
            const T* lh = lp + (b * a.q_heads + h) * a.q_len;
            T* gqh = gqp + q_off;
            std::fill(gqh, gqh + a.q_len * d, T(0));
            for (int64_t q0 = 0; q0 < a.q_len; q0 += kBlockQ) {
              const int64_t nq = std::min(kBlockQ, a.q_len - q0);
              for (int64_t i = 0; i < nq; ++i) {
                T dot = 0;
                for (int64_t c = 0; c < d; ++c) dot += goh[(q0 + i) * d + c] * oh[(q0 + i) * d + c];
                delta[i] = dot;
              }
              const int64_t k_end = vis.key_end(q0 + nq, a.kv_len);
              for (int64_t k0 = 0; k0 < k_end; k0 += kBlockK) {
                const int64_t nk = std::min(kBlockK, k_end - k0);
                scores(qh, kh, q0, nq, k0, nk, d, sc, vis, p.data());
                for (int64_t i = 0; i < nq; ++i) {
                  const T row_lse = lh[q0 + i];
                  for (int64_t j = 0; j < nk; ++j) {
                    T& x = p[i * nk + j];
                    x = row_lse == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(x - row_lse);
                  }
                }
                // dV_j += P^T dO_i ;  dP = dO_i V_j^T
                gemm<T>(true, false, nk, d, nq, T(1), p.data(), nk, goh + q0 * d, d, T(1), gvh + k0 * d, d);
                gemm<T>(false, true, nq, nk, d, T(1), goh + q0 * d, d, vh + k0 * d, d, T(0), dp.data(), nk);
                for (int64_t i = 0; i < nq; ++i)
                  for (int64_t j = 0; j < nk; ++j) dp[i * nk + j] = p[i * nk + j] * (dp[i * nk + j] - delta[i]);
                // dQ_i += scale dS K_j ;  dK_j += scale dS^T Q_i
                gemm<T>(false, false, nq, d, nk, sc, dp.data(), nk, kh + k0 * d, d, T(1), gqh + q0 * d, d);
                gemm<T>(true, false, nk, d, nq, sc, dp.data(), nk, qh + q0 * d, d, T(1), gkh + k0 * d, d);
              }
            }
          }
        }
    }
  });
}

}  // namespace bvllm::cpu
