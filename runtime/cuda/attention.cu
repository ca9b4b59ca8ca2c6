// Scaled-dot-product attention on the GPU, FlashAttention-2 style (Dao 2023, "FlashAttention-2",
// algorithms 1 and 2): the same blockwise math as runtime/cpu/attention.cc, which is its parity
// reference. Per (batch, head) only [tile, tile] score blocks exist, in shared memory.
//
// Forward, one block per (batch, query head, query tile); per key tile, for each query row i:
//   s_j = scale * q_i . k_j            (-inf where key j is not visible from query i)
//   m'  = max(m, max_j s_j),  p_j = exp(s_j - m'),  l' = l exp(m - m') + sum_j p_j
//   o'  = o exp(m - m') + sum_j p_j v_j
// and at the end out_i = o / l, lse_i = m + log(l) (0 and -inf for a row that sees no key).
// Exponentials are base 2 on pre-scaled scores (s * log2(e)), as FlashAttention does.
//
// Backward recomputes P from the saved lse:
//   P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - Delta), Delta_i = dO_i . O_i,
//   dQ = scale dS K, dK = scale dS^T Q.
// - attention_delta_kernel computes Delta (f32, or f64 for f64) once per query row.
// - attention_dkdv_kernel: one block per (batch, kv head, key tile) owns dK and dV of those keys
//   and loops over every query tile of every query head of its GQA group, so dK and dV are plain
//   register sums: deterministic, no atomics.
// - attention_dq_kernel: one block per (batch, query head, query tile) loops over key tiles like
//   the forward and sums dQ. It recomputes S and dP, so the backward does 8 tile products where
//   FlashAttention-2's atomic variant does 5 (atomicAdd of dS K into an f32 dQ scratch from the
//   dK/dV blocks). We take the cost for bitwise-reproducible gradients and no scratch buffer;
//   the atomic variant is the first thing to try if attention backward dominates a profile.
//
// Visibility (as the CPU): query i sees key j when (!causal || j <= i + Lk - Lq) and the padding
// mask keeps j. Causal tiles past the diagonal are skipped, and so are key tiles the mask drops
// entirely. Query head h reads kv head h / (Hq / Hkv).
//
// The two tile products per step (S = Q K^T and O += P V, and their backward cousins) go through
// a warp-level "Mma" policy, so one kernel text serves two engines:
// - WmmaMma (bf16, f16): tensor cores through nvcuda::wmma 16x16x16 with f32 accumulators.
//   Inputs to the products (Q, K, V, dO, and P and dS once computed) are rounded to the input
//   dtype, as in FlashAttention; softmax statistics and all sums stay f32.
// - SimtMma (f32, f64, and bf16/f16 when BVLLM_ATTENTION_SIMT=1): CUDA cores, accumulating in f32
//   (f64 for f64). It is the plain reference for the tensor-core path: when a half-precision
//   parity test fails, rerun it with BVLLM_ATTENTION_SIMT=1 to tell the softmax/masking logic
//   (shared) from the WMMA fragment plumbing (policy-specific).
// Head dims: any D <= 128; tiles are padded with zeros to 64 or 128 columns.
//
// Scores and outputs are staged through shared memory between the two products (WMMA does not
// expose which accumulator element sits in which lane), which makes this an FA2-shaped kernel
// without FA2's register-resident softmax: expect well under FA2's ~300 TFLOP/s on H100 (research
// cuda-backend.md §3.2). The faster routes are cuDNN's fused SDPA (the composite graph, §2.5;
// it would plug in at attention_forward/attention_backward below, falling back to these kernels
// for shapes cuDNN declines) and, for this kernel, mma.sync with register accumulators.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <glog/logging.h>
#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "runtime/cuda/common.cuh"  // defines: visit_float, acc_t, load, store
#include "runtime/cuda/kernels.h"   // defines: attention_forward, attention_backward
#include "runtime/tensor.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "attention.cu needs sm_80 or newer (bf16 WMMA)"
#endif

namespace bvllm::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

template <typename A>
__device__ __forceinline__ A exp2_(A x) {
  if constexpr (std::is_same_v<A, double>) {
    return exp2(x);
  } else {
    return exp2f(x);
  }
}

template <typename A>
__device__ __forceinline__ A log2_(A x) {
  if constexpr (std::is_same_v<A, double>) {
    return log2(x);
  } else {
    return log2f(x);
  }
}

constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// --- warp-level tile products ----------------------------------------------------------------
//
// A warp owns a 16 x N accumulator tile (Accum<N>) and computes, from shared memory,
//   mma_ab<K>:  acc += A[16, K] B[K, N]     (A row-major lda, B row-major ldb)
//   mma_abt<K>: acc += A[16, K] B[N, K]^T   (B row-major ldb, i.e. the rows of B are dotted)
// store_acc/load_acc move the tile to/from a row-major f32 (f64) array with leading dimension ldc.

// Tensor cores via WMMA. Pointers must be 32-byte aligned and leading dimensions multiples of 16
// bytes; the tile layouts below guarantee both.
template <typename T_>
struct WmmaMma {
  using T = T_;
  using A = float;
  static constexpr int kWarps = 4;
  static constexpr int kPadT = 8;    // row strides 16 bytes off a 256-byte multiple: no bank conflicts
  static constexpr int kPadAcc = 4;  // f32 rows likewise
  template <int N>
  struct Accum {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f[N / 16];
  };

  template <int N>
  __device__ static void zero(Accum<N>& acc) {
#pragma unroll
    for (int j = 0; j < N / 16; ++j) wmma::fill_fragment(acc.f[j], 0.0f);
  }
  template <int K, int N>
  __device__ static void mma_ab(Accum<N>& acc, const T* a, int lda, const T* b, int ldb) {
#pragma unroll 1  // rolled: unrolling raised registers (and spills) with no measurement to justify it
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a + k, lda);
#pragma unroll
      for (int j = 0; j < N / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b + k * ldb + 16 * j, ldb);
        wmma::mma_sync(acc.f[j], fa, fb, acc.f[j]);
      }
    }
  }
  template <int K, int N>
  __device__ static void mma_abt(Accum<N>& acc, const T* a, int lda, const T* b, int ldb) {
#pragma unroll 1  // rolled: unrolling raised registers (and spills) with no measurement to justify it
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a + k, lda);
#pragma unroll
      for (int j = 0; j < N / 16; ++j) {
        // B^T[k..k+16, 16j..16j+16] is column-major in B's rows.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, b + 16 * j * ldb + k, ldb);
        wmma::mma_sync(acc.f[j], fa, fb, acc.f[j]);
      }
    }
  }
  template <int N>
  __device__ static void store_acc(const Accum<N>& acc, A* c, int ldc) {
#pragma unroll
    for (int j = 0; j < N / 16; ++j) wmma::store_matrix_sync(c + 16 * j, acc.f[j], ldc, wmma::mem_row_major);
  }
  template <int N>
  __device__ static void load_acc(Accum<N>& acc, const A* c, int ldc) {
#pragma unroll
    for (int j = 0; j < N / 16; ++j) wmma::load_matrix_sync(acc.f[j], c + 16 * j, ldc, wmma::mem_row_major);
  }
};

// CUDA cores. Lane l owns columns l, l + 32, ... of the accumulator tile, all 16 rows.
template <typename T_>
struct SimtMma {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kWarps = 2;  // 32-row tiles keep f64 within 163 KiB of shared memory
  static constexpr int kPadT = 1;   // odd row strides: lanes reading down a column hit distinct banks
  static constexpr int kPadAcc = 1;
  template <int N>
  struct Accum {
    static_assert(N % 32 == 0);
    A v[16][N / 32];
  };

  template <int N>
  __device__ static void zero(Accum<N>& acc) {
#pragma unroll
    for (int r = 0; r < 16; ++r)
#pragma unroll
      for (int j = 0; j < N / 32; ++j) acc.v[r][j] = 0;
  }
  template <int K, int N>
  __device__ static void mma_ab(Accum<N>& acc, const T* a, int lda, const T* b, int ldb) {
    const int lane = threadIdx.x % 32;
#pragma unroll 2
    for (int k = 0; k < K; ++k) {
      A bk[N / 32];
#pragma unroll
      for (int j = 0; j < N / 32; ++j) bk[j] = load(b + k * ldb + lane + 32 * j);
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const A ar = load(a + r * lda + k);
#pragma unroll
        for (int j = 0; j < N / 32; ++j) acc.v[r][j] += ar * bk[j];
      }
    }
  }
  template <int K, int N>
  __device__ static void mma_abt(Accum<N>& acc, const T* a, int lda, const T* b, int ldb) {
    const int lane = threadIdx.x % 32;
#pragma unroll 2
    for (int k = 0; k < K; ++k) {
      A bk[N / 32];
#pragma unroll
      for (int j = 0; j < N / 32; ++j) bk[j] = load(b + (lane + 32 * j) * ldb + k);
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const A ar = load(a + r * lda + k);
#pragma unroll
        for (int j = 0; j < N / 32; ++j) acc.v[r][j] += ar * bk[j];
      }
    }
  }
  template <int N>
  __device__ static void store_acc(const Accum<N>& acc, A* c, int ldc) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < 16; ++r)
#pragma unroll
      for (int j = 0; j < N / 32; ++j) c[r * ldc + lane + 32 * j] = acc.v[r][j];
  }
  template <int N>
  __device__ static void load_acc(Accum<N>& acc, const A* c, int ldc) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < 16; ++r)
#pragma unroll
      for (int j = 0; j < N / 32; ++j) acc.v[r][j] = c[r * ldc + lane + 32 * j];
  }
};

// --- tile geometry and shared memory ---------------------------------------------------------
//
// A block has kWarps warps; a tile is kTile = 16 * kWarps rows (queries or keys), and warp w owns
// rows 16w .. 16w + 15 of the block's own tile. Within a warp, lane l owns row l / 2 of the
// warp's 16 x kTile score tile, columns (l % 2) * kCols .. + kCols: its softmax statistics live
// in that lane's registers.
template <class Mma, int kD_>
struct Cfg {
  using T = typename Mma::T;
  using A = typename Mma::A;
  static constexpr int kD = kD_;  // padded head dim
  static constexpr int kWarps = Mma::kWarps, kThreads = 32 * kWarps, kTile = 16 * kWarps, kCols = kTile / 2;
  static constexpr int kLd = kD + Mma::kPadT;        // Q, K, V, dO tiles: [kTile][kLd] of T
  static constexpr int kLdS = kTile + Mma::kPadAcc;  // per warp scores S, dP: [16][kLdS] of A
  static constexpr int kLdP = kTile + Mma::kPadT;    // per warp P, dS (product inputs): [16][kLdP] of T
  static constexpr int kLdO = kD + Mma::kPadAcc;     // per warp output rows O, dQ, dK, dV: [16][kLdO] of A
  // P (or dS) overwrites S element by element when both have the same size and stride: a lane
  // then reads and writes only its own elements.
  static constexpr bool kInPlace = sizeof(T) == sizeof(A) && kLdP == kLdS;
  static constexpr size_t kTileBytes = align128(size_t(kTile) * kLd * sizeof(T));
  static constexpr size_t kScoreBytes = align128(16 * kLdS * sizeof(A));
  static constexpr size_t kProbBytes = kInPlace ? 0 : align128(16 * kLdP * sizeof(T));
  static constexpr size_t kRowBytes = align128(16 * kLdO * sizeof(A));
  static constexpr size_t kVecBytes = align128(kTile * sizeof(A));
  static constexpr size_t kKeepBytes = align128(kTile);
  // Backward, per warp: WarpScores (S, dP, the T buffer); the same bytes finally hold the warp's
  // output rows.
  static constexpr size_t kWarpBytes = std::max(2 * kScoreBytes + kProbBytes, kRowBytes);
  // Forward: Q, K, V tiles, keep flags, per warp S, P (unless in place) and O.
  static constexpr size_t kForwardWarpBytes = kScoreBytes + kProbBytes + kRowBytes;
  static constexpr size_t kForwardBytes = 3 * kTileBytes + kKeepBytes + kWarps * kForwardWarpBytes;
  // Backward (both kernels): four tiles, lse and Delta of a query tile, keep flags, per warp scratch.
  static constexpr size_t kBackwardBytes = 4 * kTileBytes + 2 * kVecBytes + kKeepBytes + kWarps * kWarpBytes;
  // WMMA: leading dimensions in multiples of 16 bytes (fragment pointers are then 32-byte aligned).
  static_assert(!std::is_same_v<Mma, WmmaMma<T>> || (kLd * sizeof(T) % 16 == 0 && kLdP * sizeof(T) % 16 == 0 &&
                                                     kLdS * sizeof(A) % 16 == 0 && kLdO * sizeof(A) % 16 == 0));
};

// A warp's score buffers inside its scratch region: S and dP as A, and one T buffer that feeds
// the second product (P, then dS), which is S itself when C::kInPlace.
template <class C>
struct WarpScores {
  using T = typename C::T;
  using A = typename C::A;
  A* s;
  A* dp;
  T* p;
  __device__ explicit WarpScores(unsigned char* base)
      : s(reinterpret_cast<A*>(base)),
        dp(reinterpret_cast<A*>(base + C::kScoreBytes)),
        p(reinterpret_cast<T*>(C::kInPlace ? base : base + 2 * C::kScoreBytes)) {}
};

// --- kernel arguments ------------------------------------------------------------------------

template <typename T>
struct Params {
  using A = acc_t<T>;
  const T *q, *k, *v;   // [B, Hq, Lq, D], [B, Hkv, Lk, D] x2, contiguous
  const T *out, *gout;  // backward: the forward's output and its gradient
  T *o, *gq, *gk, *gv;  // outputs: forward o; backward gq, gk, gv
  A* lse;               // [B, Hq, Lq]: written by the forward, read by the backward
  A* delta;             // [B, Hq, Lq]: rowsum(dO * O), backward
  const bool* keep;     // [B, Lk] padding mask or null
  int64_t q_len, kv_len;
  int q_heads, kv_heads, head_dim;
  A scale, scale_log2;  // scale and scale * log2(e)
  bool causal;
  bool vec;  // tensors 16-byte aligned and D a multiple of 16 bytes: copy tiles in 16-byte chunks
};

// Copies rows row0 .. row0 + kTile of a row-major [rows, d] matrix into a [kTile][kLd] tile,
// with zeros past the last row and past column d. All threads of the block take part.
template <class C>
__device__ void load_tile(typename C::T* dst, const typename C::T* src, int64_t row0, int64_t rows, int d, bool vec) {
  using T = typename C::T;
  constexpr int kVec = 16 / sizeof(T);
  if constexpr ((C::kLd * sizeof(T)) % 16 == 0 && C::kD % kVec == 0) {
    if (vec) {
      constexpr int kChunks = C::kD / kVec;
      for (int i = threadIdx.x; i < C::kTile * kChunks; i += C::kThreads) {
        const int r = i / kChunks, c = (i % kChunks) * kVec;
        uint4 chunk = make_uint4(0, 0, 0, 0);
        if (row0 + r < rows && c < d) chunk = *reinterpret_cast<const uint4*>(src + (row0 + r) * d + c);
        *reinterpret_cast<uint4*>(dst + r * C::kLd + c) = chunk;
      }
      return;
    }
  }
  for (int i = threadIdx.x; i < C::kTile * C::kD; i += C::kThreads) {
    const int r = i / C::kD, c = i % C::kD;
    if (row0 + r < rows && c < d) {
      dst[r * C::kLd + c] = src[(row0 + r) * d + c];
    } else {
      store(dst + r * C::kLd + c, 0.0f);
    }
  }
}

// Marks which keys k0 .. k0 + kTile exist and pass the padding mask; returns this thread's flag
// (threads past kTile return false).
template <class C>
__device__ bool load_keep(bool* keep_s, const bool* keep, int64_t k0, int64_t kv_len) {
  if (threadIdx.x >= C::kTile) return false;
  const int64_t j = k0 + threadIdx.x;
  const bool kept = j < kv_len && (keep == nullptr || keep[j]);
  keep_s[threadIdx.x] = kept;
  return kept;
}

// Writes rows row0 .. row0 + 16 (those < rows) of a warp's [16][kLdO] tile, times `factor` per
// row, to a row-major [rows, d] matrix: one row at a time, lanes along the columns.
template <class C>
__device__ void write_rows(typename C::T* dst, const typename C::A* tile, int64_t row0, int64_t rows, int d,
                           typename C::A factor) {
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < 16 && row0 + r < rows; ++r)
    for (int c = lane; c < d; c += 32) store(dst + (row0 + r) * d + c, tile[r * C::kLdO + c] * factor);
}

// --- forward ---------------------------------------------------------------------------------

template <class Mma, int kD>
__global__ void __launch_bounds__(Cfg<Mma, kD>::kThreads) attention_forward_kernel(const Params<typename Mma::T> p) {
  using C = Cfg<Mma, kD>;
  using T = typename C::T;
  using A = typename C::A;
  constexpr int kTile = C::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* ks = reinterpret_cast<T*>(smem + C::kTileBytes);
  T* vs = reinterpret_cast<T*>(smem + 2 * C::kTileBytes);
  bool* keep_s = reinterpret_cast<bool*>(smem + 3 * C::kTileBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* scratch = smem + 3 * C::kTileBytes + C::kKeepBytes;
  unsigned char* mine = scratch + warp * C::kForwardWarpBytes;
  A* sw = reinterpret_cast<A*>(mine);                                        // S
  T* pw = reinterpret_cast<T*>(C::kInPlace ? mine : mine + C::kScoreBytes);  // P (over S when in place)
  A* ow = reinterpret_cast<A*>(mine + C::kScoreBytes + C::kProbBytes);       // O, unnormalized

  // Causal: the last query tiles see the most keys; start them first.
  const int64_t tile = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int64_t q0 = tile * kTile, b = blockIdx.z;
  const int h = blockIdx.y;
  const int64_t bh = b * p.q_heads + h, bkv = b * p.kv_heads + h / (p.q_heads / p.kv_heads);
  const int d = p.head_dim;
  const T* k = p.k + bkv * p.kv_len * d;
  const T* v = p.v + bkv * p.kv_len * d;
  const bool* keep = p.keep ? p.keep + b * p.kv_len : nullptr;

  load_tile<C>(qs, p.q + bh * p.q_len * d, q0, p.q_len, d, p.vec);
  for (int i = lane; i < 16 * C::kLdO; i += 32) ow[i] = 0;

  const int r = lane / 2, c0 = (lane % 2) * C::kCols;
  const int64_t qi = q0 + 16 * warp + r;  // this lane's query row
  const int64_t shift = p.kv_len - p.q_len;
  A m = neg_inf<A>(), l = 0;  // running max (log2 units) and sum of exponentials

  // Keys past the diagonal of the tile's last query are invisible to the whole tile.
  const int64_t q_end = std::min<int64_t>(q0 + kTile, p.q_len);
  const int64_t k_end = p.causal ? std::max<int64_t>(0, std::min<int64_t>(p.kv_len, q_end + shift)) : p.kv_len;
  for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();  // everyone is done with the previous K, V tiles and keep flags
    const bool kept = load_keep<C>(keep_s, keep, k0, p.kv_len);
    load_tile<C>(ks, k, k0, p.kv_len, d, p.vec);
    load_tile<C>(vs, v, k0, p.kv_len, d, p.vec);
    if (!__syncthreads_or(kept)) continue;  // the mask drops the whole tile

    // S = Q K^T for this warp's 16 queries.
    {
      typename Mma::template Accum<kTile> s;
      Mma::zero(s);
      Mma::template mma_abt<kD>(s, qs + 16 * warp * C::kLd, C::kLd, ks, C::kLd);
      Mma::store_acc(s, sw, C::kLdS);
    }
    __syncwarp();

    // Online softmax of this lane's half row.
    A x[C::kCols];
    A mx = neg_inf<A>();
#pragma unroll
    for (int c = 0; c < C::kCols; ++c) {
      const int64_t j = k0 + c0 + c;
      const bool visible = keep_s[c0 + c] && (!p.causal || j <= qi + shift);
      x[c] = visible ? sw[r * C::kLdS + c0 + c] * p.scale_log2 : neg_inf<A>();
      mx = max(mx, x[c]);
    }
    mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const A m_new = max(m, mx);
    A correction = 1, sum = 0;
    if (m_new == neg_inf<A>()) {  // nothing visible to this row yet
#pragma unroll
      for (int c = 0; c < C::kCols; ++c) x[c] = 0;
    } else {
      correction = exp2_(m - m_new);  // 0 when m was -inf (o is still 0 then)
#pragma unroll
      for (int c = 0; c < C::kCols; ++c) {
        x[c] = exp2_(x[c] - m_new);
        sum += x[c];
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * correction + sum;
    m = m_new;
    __syncwarp();  // in place, P overwrites S: all lanes have read their scores
#pragma unroll
    for (int c = 0; c < C::kCols; ++c) store(pw + r * C::kLdP + c0 + c, x[c]);
    if (correction != A(1)) {
      A* orow = ow + r * C::kLdO + (lane % 2) * (kD / 2);
#pragma unroll 8
      for (int c = 0; c < kD / 2; ++c) orow[c] *= correction;
    }
    __syncwarp();

    // O += P V.
    {
      typename Mma::template Accum<kD> o;
      Mma::load_acc(o, ow, C::kLdO);
      Mma::template mma_ab<kTile>(o, pw, C::kLdP, vs, C::kLd);
      Mma::store_acc(o, ow, C::kLdO);
    }
  }
  __syncwarp();

  // Lane 2r holds row r's statistics.
  const A inv = l > 0 ? A(1) / l : A(0);
  if (lane % 2 == 0 && qi < p.q_len) p.lse[bh * p.q_len + qi] = l > 0 ? (m + log2_(l)) * A(kLn2) : neg_inf<A>();
  T* o = p.o + bh * p.q_len * d;
  const int64_t row0 = q0 + 16 * warp;
  for (int rr = 0; rr < 16; ++rr) {
    const A inv_r = __shfl_sync(0xffffffffu, inv, 2 * rr);
    if (row0 + rr < p.q_len)
      for (int c = lane; c < d; c += 32) store(o + (row0 + rr) * d + c, ow[rr * C::kLdO + c] * inv_r);
  }
}

// --- backward --------------------------------------------------------------------------------

// Delta_i = dO_i . O_i, one warp per query row.
template <typename T>
__global__ void attention_delta_kernel(const T* out, const T* gout, acc_t<T>* delta, int64_t rows, int d) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows; row += warps) {
    A sum = 0;
    for (int c = lane; c < d; c += 32) sum += load(out + row * d + c) * load(gout + row * d + c);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) delta[row] = sum;
  }
}

template <class Mma, int kD>
__global__ void __launch_bounds__(Cfg<Mma, kD>::kThreads) attention_dkdv_kernel(const Params<typename Mma::T> p) {
  using C = Cfg<Mma, kD>;
  using T = typename C::T;
  using A = typename C::A;
  constexpr int kTile = C::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem);
  T* vs = reinterpret_cast<T*>(smem + C::kTileBytes);
  T* qs = reinterpret_cast<T*>(smem + 2 * C::kTileBytes);
  T* dos = reinterpret_cast<T*>(smem + 3 * C::kTileBytes);
  A* lse_s = reinterpret_cast<A*>(smem + 4 * C::kTileBytes);  // log2 units
  A* delta_s = reinterpret_cast<A*>(smem + 4 * C::kTileBytes + C::kVecBytes);
  bool* keep_s = reinterpret_cast<bool*>(smem + 4 * C::kTileBytes + 2 * C::kVecBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* scratch = smem + 4 * C::kTileBytes + 2 * C::kVecBytes + C::kKeepBytes + warp * C::kWarpBytes;
  const WarpScores<C> w(scratch);

  const int64_t k0 = int64_t(blockIdx.x) * kTile, b = blockIdx.z;
  const int hkv = blockIdx.y, group = p.q_heads / p.kv_heads;
  const int64_t bkv = b * p.kv_heads + hkv;
  const int d = p.head_dim;
  load_tile<C>(ks, p.k + bkv * p.kv_len * d, k0, p.kv_len, d, p.vec);
  load_tile<C>(vs, p.v + bkv * p.kv_len * d, k0, p.kv_len, d, p.vec);
  const bool any_kept = __syncthreads_or(load_keep<C>(keep_s, p.keep ? p.keep + b * p.kv_len : nullptr, k0, p.kv_len));

  typename Mma::template Accum<kD> dk, dv;
  Mma::zero(dk);
  Mma::zero(dv);
  const int r = lane / 2, c0 = (lane % 2) * C::kCols;
  const int64_t kj = k0 + 16 * warp + r;  // this lane's key
  const bool key_kept = keep_s[16 * warp + r];
  const int64_t shift = p.kv_len - p.q_len;
  // Causal: query i sees key j >= k0 only if i >= k0 - shift.
  const int64_t q_begin = p.causal ? std::max<int64_t>(0, k0 - shift) : 0;

  for (int g = 0; any_kept && g < group; ++g) {
    const int64_t bh = b * p.q_heads + hkv * group + g;
    const T* q = p.q + bh * p.q_len * d;
    const T* gout = p.gout + bh * p.q_len * d;
    for (int64_t q0 = q_begin; q0 < p.q_len; q0 += kTile) {
      __syncthreads();  // everyone is done with the previous Q, dO, lse, Delta
      load_tile<C>(qs, q, q0, p.q_len, d, p.vec);
      load_tile<C>(dos, gout, q0, p.q_len, d, p.vec);
      if (threadIdx.x < kTile) {
        const int64_t i = q0 + threadIdx.x;
        lse_s[threadIdx.x] = i < p.q_len ? p.lse[bh * p.q_len + i] * A(kLog2e) : neg_inf<A>();
        delta_s[threadIdx.x] = i < p.q_len ? p.delta[bh * p.q_len + i] : A(0);
      }
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
      {
        typename Mma::template Accum<kTile> s;
        Mma::zero(s);
        Mma::template mma_abt<kD>(s, ks + 16 * warp * C::kLd, C::kLd, qs, C::kLd);
        Mma::store_acc(s, w.s, C::kLdS);
        Mma::zero(s);
        Mma::template mma_abt<kD>(s, vs + 16 * warp * C::kLd, C::kLd, dos, C::kLd);
        Mma::store_acc(s, w.dp, C::kLdS);
      }
      __syncwarp();

      // P^T into the T buffer; dS^T over dP^T (same lane, same element).
#pragma unroll 4
      for (int c = 0; c < C::kCols; ++c) {
        const int col = c0 + c;
        const int64_t i = q0 + col;
        const A lse2 = lse_s[col];
        const bool visible = key_kept && lse2 != neg_inf<A>() && (!p.causal || kj <= i + shift);
        const A pij = visible ? exp2_(w.s[r * C::kLdS + col] * p.scale_log2 - lse2) : A(0);
        A& dij = w.dp[r * C::kLdS + col];
        dij = pij * (dij - delta_s[col]);
        store(w.p + r * C::kLdP + col, pij);
      }
      __syncwarp();
      Mma::template mma_ab<kTile>(dv, w.p, C::kLdP, dos, C::kLd);  // dV += P^T dO
      __syncwarp();  // P has been read: dS^T, rounded to T, takes its buffer
#pragma unroll 4
      for (int c = 0; c < C::kCols; ++c) store(w.p + r * C::kLdP + c0 + c, w.dp[r * C::kLdS + c0 + c]);
      __syncwarp();
      Mma::template mma_ab<kTile>(dk, w.p, C::kLdP, qs, C::kLd);  // dK += dS^T Q
    }
  }

  // The scratch region now holds the warp's output rows.
  __syncwarp();
  A* rows = reinterpret_cast<A*>(scratch);
  Mma::store_acc(dv, rows, C::kLdO);
  __syncwarp();
  write_rows<C>(p.gv + bkv * p.kv_len * d, rows, k0 + 16 * warp, p.kv_len, d, A(1));
  __syncwarp();
  Mma::store_acc(dk, rows, C::kLdO);
  __syncwarp();
  write_rows<C>(p.gk + bkv * p.kv_len * d, rows, k0 + 16 * warp, p.kv_len, d, p.scale);
}

template <class Mma, int kD>
__global__ void __launch_bounds__(Cfg<Mma, kD>::kThreads) attention_dq_kernel(const Params<typename Mma::T> p) {
  using C = Cfg<Mma, kD>;
  using T = typename C::T;
  using A = typename C::A;
  constexpr int kTile = C::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* dos = reinterpret_cast<T*>(smem + C::kTileBytes);
  T* ks = reinterpret_cast<T*>(smem + 2 * C::kTileBytes);
  T* vs = reinterpret_cast<T*>(smem + 3 * C::kTileBytes);
  bool* keep_s = reinterpret_cast<bool*>(smem + 4 * C::kTileBytes + 2 * C::kVecBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* scratch = smem + 4 * C::kTileBytes + 2 * C::kVecBytes + C::kKeepBytes + warp * C::kWarpBytes;
  const WarpScores<C> w(scratch);

  const int64_t tile = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int64_t q0 = tile * kTile, b = blockIdx.z;
  const int h = blockIdx.y;
  const int64_t bh = b * p.q_heads + h, bkv = b * p.kv_heads + h / (p.q_heads / p.kv_heads);
  const int d = p.head_dim;
  const T* k = p.k + bkv * p.kv_len * d;
  const T* v = p.v + bkv * p.kv_len * d;
  const bool* keep = p.keep ? p.keep + b * p.kv_len : nullptr;
  load_tile<C>(qs, p.q + bh * p.q_len * d, q0, p.q_len, d, p.vec);
  load_tile<C>(dos, p.gout + bh * p.q_len * d, q0, p.q_len, d, p.vec);

  const int r = lane / 2, c0 = (lane % 2) * C::kCols;
  const int64_t qi = q0 + 16 * warp + r;  // this lane's query row
  const A lse2 = qi < p.q_len ? p.lse[bh * p.q_len + qi] * A(kLog2e) : neg_inf<A>();
  const A delta = qi < p.q_len ? p.delta[bh * p.q_len + qi] : A(0);
  const int64_t shift = p.kv_len - p.q_len;
  typename Mma::template Accum<kD> dq;
  Mma::zero(dq);

  const int64_t q_end = std::min<int64_t>(q0 + kTile, p.q_len);
  const int64_t k_end = p.causal ? std::max<int64_t>(0, std::min<int64_t>(p.kv_len, q_end + shift)) : p.kv_len;
  for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
    __syncthreads();  // everyone is done with the previous K, V tiles and keep flags
    const bool kept = load_keep<C>(keep_s, keep, k0, p.kv_len);
    load_tile<C>(ks, k, k0, p.kv_len, d, p.vec);
    load_tile<C>(vs, v, k0, p.kv_len, d, p.vec);
    if (!__syncthreads_or(kept)) continue;

    // S = Q K^T and dP = dO V^T for this warp's 16 queries.
    {
      typename Mma::template Accum<kTile> s;
      Mma::zero(s);
      Mma::template mma_abt<kD>(s, qs + 16 * warp * C::kLd, C::kLd, ks, C::kLd);
      Mma::store_acc(s, w.s, C::kLdS);
      Mma::zero(s);
      Mma::template mma_abt<kD>(s, dos + 16 * warp * C::kLd, C::kLd, vs, C::kLd);
      Mma::store_acc(s, w.dp, C::kLdS);
    }
    __syncwarp();

#pragma unroll 4
    for (int c = 0; c < C::kCols; ++c) {
      const int col = c0 + c;
      const int64_t j = k0 + col;
      const bool visible = keep_s[col] && lse2 != neg_inf<A>() && (!p.causal || j <= qi + shift);
      const A pij = visible ? exp2_(w.s[r * C::kLdS + col] * p.scale_log2 - lse2) : A(0);
      store(w.p + r * C::kLdP + col, pij * (w.dp[r * C::kLdS + col] - delta));  // dS (over S when in place)
    }
    __syncwarp();

    Mma::template mma_ab<kTile>(dq, w.p, C::kLdP, ks, C::kLd);  // dQ += dS K
  }

  __syncwarp();
  A* rows = reinterpret_cast<A*>(scratch);
  Mma::store_acc(dq, rows, C::kLdO);
  __syncwarp();
  write_rows<C>(p.gq + bh * p.q_len * d, rows, q0 + 16 * warp, p.q_len, d, p.scale);
}

// --- host side -------------------------------------------------------------------------------

// BVLLM_ATTENTION_SIMT=1 runs bf16/f16 on the CUDA-core path (see the top of this file).
bool force_simt() {
  static const bool force = [] {
    const char* e = std::getenv("BVLLM_ATTENTION_SIMT");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return force;
}

// Calls f.template operator()<Mma, kD>() for the engine and padded head dim of this problem.
template <typename F>
void dispatch(DType dtype, int64_t head_dim, F&& f) {
  BVLLM_REQUIRE(head_dim <= 128, "scaled_dot_product_attention on CUDA supports head dims up to 128, got ", head_dim);
  visit_float(dtype, [&]<typename T>() {
    auto by_dim = [&]<class Mma>() {
      if (head_dim <= 64) {
        f.template operator()<Mma, 64>();
      } else {
        f.template operator()<Mma, 128>();
      }
    };
    if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
      if (!force_simt()) return by_dim.template operator()<WmmaMma<T>>();
    }
    by_dim.template operator()<SimtMma<T>>();
  });
}

template <typename Kernel, typename P>
void launch(Kernel kernel, dim3 grid, int threads, size_t smem, const P& params, int device) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  BVLLM_REQUIRE(grid.y <= 65535 && grid.z <= 65535, "scaled_dot_product_attention on CUDA: ", grid.y, " heads x ",
                grid.z, " batch exceeds the grid limit of 65535 each");
  int max_smem = 0;
  BVLLM_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  CHECK_LE(smem, static_cast<size_t>(max_smem))
      << "attention kernel needs more shared memory than cuda:" << device << " has";
  BVLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, threads, smem, current_stream(device)>>>(params);
  BVLLM_CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
Params<T> params_of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale) {
  CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous()) << "attention: q, k, v must be contiguous";
  CHECK(k.shape() == v.shape() && q.dim() == 4 && q.size(0) == k.size(0) && q.size(3) == k.size(3) && k.size(1) > 0 &&
        q.size(1) % k.size(1) == 0)
      << "attention: q " << shape_str(q.shape()) << ", k " << shape_str(k.shape()) << ", v " << shape_str(v.shape());
  Params<T> p{};
  p.q = static_cast<const T*>(q.raw_data());
  p.k = static_cast<const T*>(k.raw_data());
  p.v = static_cast<const T*>(v.raw_data());
  if (mask.defined()) {
    CHECK(mask.dtype() == DType::Bool && mask.is_contiguous() && mask.dim() == 2 && mask.size(0) == q.size(0) &&
          mask.size(1) == k.size(2))
        << "attention: mask must be contiguous bool [B, Lk], got " << shape_str(mask.shape());
    p.keep = static_cast<const bool*>(mask.raw_data());
  }
  p.q_len = q.size(2);
  p.kv_len = k.size(2);
  p.q_heads = static_cast<int>(q.size(1));
  p.kv_heads = static_cast<int>(k.size(1));
  p.head_dim = static_cast<int>(q.size(3));
  p.scale = static_cast<acc_t<T>>(scale);
  p.scale_log2 = static_cast<acc_t<T>>(scale * kLog2e);
  p.causal = causal;
  p.vec = p.head_dim * sizeof(T) % 16 == 0 && aligned16(p.q) && aligned16(p.k) && aligned16(p.v);
  return p;
}

int64_t tiles(int64_t n, int tile) { return (n + tile - 1) / tile; }

}  // namespace

// cuDNN's SDPA (a cached composite graph per shape, research §2.5-2.8) slots in at the top of
// these two functions once it exists, returning early for the shapes it accepts; these kernels
// stay the fallback and the reference.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
                       Tensor& out, Tensor& lse) {
  if (lse.numel() == 0) return;  // no query rows
  const int device = q.device().index;
  dispatch(q.dtype(), q.size(3), [&]<class Mma, int kD>() {
    using C = Cfg<Mma, kD>;
    using T = typename Mma::T;
    CHECK(out.is_contiguous() && lse.is_contiguous() && out.shape() == q.shape()) << "attention: bad out or lse";
    CHECK(lse.dtype() == (std::is_same_v<T, double> ? DType::F64 : DType::F32)) << "attention: lse dtype";
    Params<T> p = params_of<T>(q, k, v, mask, causal, scale);
    p.o = static_cast<T*>(out.raw_data());
    p.lse = static_cast<acc_t<T>*>(lse.raw_data());
    const dim3 grid(static_cast<unsigned>(tiles(p.q_len, C::kTile)), p.q_heads, static_cast<unsigned>(q.size(0)));
    launch(attention_forward_kernel<Mma, kD>, grid, C::kThreads, C::kForwardBytes, p, device);
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& gout, Tensor& gq, Tensor& gk,
                        Tensor& gv) {
  const int device = q.device().index;
  dispatch(q.dtype(), q.size(3), [&]<class Mma, int kD>() {
    using C = Cfg<Mma, kD>;
    using T = typename Mma::T;
    using A = acc_t<T>;
    CHECK(out.is_contiguous() && gout.is_contiguous() && lse.is_contiguous() && gq.is_contiguous() &&
          gk.is_contiguous() && gv.is_contiguous() && gout.shape() == q.shape())
        << "attention backward: out, gout, lse and the gradients must be contiguous";
    Params<T> p = params_of<T>(q, k, v, mask, causal, scale);
    p.out = static_cast<const T*>(out.raw_data());
    p.gout = static_cast<const T*>(gout.raw_data());
    p.gq = static_cast<T*>(gq.raw_data());
    p.gk = static_cast<T*>(gk.raw_data());
    p.gv = static_cast<T*>(gv.raw_data());
    p.lse = static_cast<A*>(lse.raw_data());
    p.vec = p.vec && aligned16(p.gout);
    const int64_t batch = q.size(0), rows = batch * p.q_heads * p.q_len;

    // Freed when this returns, before the kernels finish: fine, because device memory is reused in
    // stream order (the caching allocator hands a freed block back out on the same stream only).
    Tensor delta = Tensor::empty(lse.shape(), lse.dtype(), q.device());
    p.delta = static_cast<A*>(delta.raw_data());
    if (rows > 0) {
      attention_delta_kernel<T>
          <<<blocks_for(rows * 32), 256, 0, current_stream(device)>>>(p.out, p.gout, p.delta, rows, p.head_dim);
      BVLLM_CUDA_CHECK_LAUNCH();
    }
    const dim3 kv_grid(static_cast<unsigned>(tiles(p.kv_len, C::kTile)), p.kv_heads, static_cast<unsigned>(batch));
    launch(attention_dkdv_kernel<Mma, kD>, kv_grid, C::kThreads, C::kBackwardBytes, p, device);
    const dim3 q_grid(static_cast<unsigned>(tiles(p.q_len, C::kTile)), p.q_heads, static_cast<unsigned>(batch));
    launch(attention_dq_kernel<Mma, kD>, q_grid, C::kThreads, C::kBackwardBytes, p, device);
  });
}

}  // namespace bvllm::cuda
