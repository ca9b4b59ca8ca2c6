// Warp and block reductions for the row kernels (softmax, norms, cross-entropy, grad norm), and
// the launch shape they share: one block per row, threads striding over the row.
//
// Every reduction combines values in a fixed tree (xor-shuffle within a warp, then the warp
// results in warp order), so for a given block size the result is the same on every run.
// Include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace bvllm::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// exp, log and sqrt in the accumulation type (the accurate functions, not the fast intrinsics).
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return ::exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return ::log(x); }
__device__ __forceinline__ float acc_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double acc_sqrt(double x) { return ::sqrt(x); }

// Running (max, sum of exp(x - max)) over part of a row: the online softmax normalizer
// (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"), which reads the row
// once instead of twice. -inf elements add nothing (and never form -inf - -inf); a NaN element
// makes the sum NaN. A max of +inf leaves a finite sum where the two-pass CPU kernels get
// exp(inf - inf) = NaN; callers that mirror the CPU check for an infinite max.
template <typename A>
struct MaxSum {
  A max, sum;
};

template <typename A>
__device__ __forceinline__ void max_sum_add(MaxSum<A>& ms, A x) {
  if (x > ms.max) {
    ms.sum = ms.sum * acc_exp(ms.max - x) + A(1);
    ms.max = x;
  } else if (x != -static_cast<A>(INFINITY)) {
    ms.sum += acc_exp(x - ms.max);
  }
}

struct MaxSumOp {
  template <typename A>
  __device__ __forceinline__ MaxSum<A> operator()(MaxSum<A> a, MaxSum<A> b) const {
    const A m = fmax(a.max, b.max);  // maxes are never NaN: a NaN x never wins `x > max`
    if (m == -static_cast<A>(INFINITY)) return {m, a.sum + b.sum};
    return {m, a.sum * acc_exp(a.max - m) + b.sum * acc_exp(b.max - m)};
  }
};

struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return a + b;
  }
};

// NaN-ignoring max (fmax): where NaN must win, the caller's sum carries it.
struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return fmax(a, b);
  }
};

template <typename A>
__device__ __forceinline__ A shuffle_down(A v, int offset) {
  return __shfl_down_sync(kFullMask, v, offset);
}
template <typename A>
__device__ __forceinline__ MaxSum<A> shuffle_down(MaxSum<A> v, int offset) {
  return {__shfl_down_sync(kFullMask, v.max, offset), __shfl_down_sync(kFullMask, v.sum, offset)};
}
template <typename A>
__device__ __forceinline__ A shuffle_lane0(A v) {
  return __shfl_sync(kFullMask, v, 0);
}
template <typename A>
__device__ __forceinline__ MaxSum<A> shuffle_lane0(MaxSum<A> v) {
  return {__shfl_sync(kFullMask, v.max, 0), __shfl_sync(kFullMask, v.sum, 0)};
}

// Tree reduction within a warp (lane 0 combines lanes 0..15 with 16..31, and so on); every lane
// gets lane 0's result, so the lanes agree even for ops that are not exactly commutative.
template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, shuffle_down(v, offset));
  return shuffle_lane0(v);
}

// Every thread of the block gets the reduction of all threads' `v`: warps reduce, then each warp
// reduces the warp results in warp order. blockDim.x must be a multiple of 32 and every thread
// must call it (it synchronizes); safe to call several times in a kernel.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op, V identity) {
  __shared__ V partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // an earlier call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : identity;
  return warp_reduce(v, op);
}

template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  return block_reduce(v, SumOp{}, A(0));
}

// Threads for a block that strides over a row of n elements: n rounded up to a warp, at most
// max_threads (a multiple of 32).
inline int row_threads(int64_t n, int max_threads) {
  const int64_t t = (n + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > max_threads ? max_threads : t));
}

// Multi-tensor launches give each tensor a run of chunks, tensor i owning chunks
// [first_chunk[i], first_chunk[i + 1]). Returns the tensor that owns `chunk` (binary search).
__device__ __forceinline__ int chunk_owner(const int64_t* first_chunk, int count, int64_t chunk) {
  int lo = 0, hi = count - 1;  // the last tensor whose first chunk is <= chunk
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_chunk[mid] <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace bvllm::cuda
