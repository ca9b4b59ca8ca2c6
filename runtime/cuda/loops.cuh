// Building blocks of the CUDA elementwise-style kernels (the device counterpart of
// runtime/cpu/loops.h): dtype conversion exactly as cpu::convert, and offsets of N strided
// tensors that share one logical shape. Include from .cu files only.
#pragma once

#include <array>
#include <type_traits>

#include "runtime/cuda/block_reduce.cuh"  // defines: block_reduce, block_sum, kFullMask
#include "runtime/cuda/common.cuh"

namespace bvllm::cuda {

template <typename T>
inline constexpr bool is_half_v = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// cpu::convert on device types: halves go through f32, anything to a half through f32 with round
// to nearest even, anything to bool is x != 0, the rest is a C++ conversion.
template <typename To, typename From>
__device__ __forceinline__ To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return convert<To>(__bfloat162float(x));
  } else if constexpr (std::is_same_v<From, __half>) {
    return convert<To>(__half2float(x));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, bool>) {
    return x != From(0);
  } else {
    return static_cast<To>(x);
  }
}

// Offsets of N tensors at logical element `flat` of a shared shape. The host side drops size-1
// dims and merges dims that are contiguous with each other in every tensor, so contiguous
// tensors cost no division and a broadcast [B, L, D] + [D] costs one.
template <int N>
struct OffsetCalc {
  int rank;
  int64_t shape[kMaxRank];
  int64_t strides[N][kMaxRank];
  int64_t base[N];  // each tensor's offset() in elements

  __host__ __device__ __forceinline__ void offsets(int64_t flat, int64_t (&out)[N]) const {
    for (int t = 0; t < N; ++t) out[t] = base[t];
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t i = d == 0 ? flat : flat % shape[d];  // flat < numel, so dim 0 needs no modulo
      flat /= shape[d];
      for (int t = 0; t < N; ++t) out[t] += i * strides[t][d];
    }
  }
  // True when every tensor is dense in the merged layout: element `flat` is at base + flat.
  bool linear() const {
    if (rank > 1) return false;
    for (int t = 0; t < N; ++t)
      if (rank == 1 && strides[t][0] != 1) return false;
    return true;
  }
};

// `tensors` all have logical shape `shape` (expanded views included); strides may be anything.
template <int N>
OffsetCalc<N> make_offset_calc(const Shape& shape, const std::array<const Tensor*, N>& tensors) {
  OffsetCalc<N> c{};
  for (int t = 0; t < N; ++t) {
    BVLLM_REQUIRE(tensors[t]->shape() == shape, "CUDA kernel: operand ", t, " has shape ",
                  shape_str(tensors[t]->shape()), ", expected ", shape_str(shape));
    c.base[t] = tensors[t]->offset();
  }
  int rank = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = rank > 0;
    for (int t = 0; merge && t < N; ++t) merge = c.strides[t][rank - 1] == tensors[t]->strides()[d] * shape[d];
    if (merge) {
      c.shape[rank - 1] *= shape[d];
      for (int t = 0; t < N; ++t) c.strides[t][rank - 1] = tensors[t]->strides()[d];
      continue;
    }
    BVLLM_REQUIRE(rank < kMaxRank, "CUDA kernel: ", shape_str(shape), " has more than ", kMaxRank,
                  " dims that do not merge");
    c.shape[rank] = shape[d];
    for (int t = 0; t < N; ++t) c.strides[t][rank] = tensors[t]->strides()[d];
    ++rank;
  }
  c.rank = rank;
  return c;
}

// An element and its index, ordered as the CPU's max and topk scans rank them: NaN before any
// number (the lower index among NaNs), then larger values first, the lower index among equals
// (so -0.0 and 0.0 tie). index < 0 marks "nothing yet" and ranks last.
template <typename A>
struct Ranked {
  A value;
  int64_t index;
};

template <typename A>
__host__ __device__ __forceinline__ bool ranks_before(const Ranked<A>& a, const Ranked<A>& b) {
  if (b.index < 0) return a.index >= 0;
  if (a.index < 0) return false;
  const bool na = a.value != a.value, nb = b.value != b.value;
  if (na || nb) return na && (!nb || a.index < b.index);
  if (a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

// Picks the first-ranked of two (a min under the total order above: associative and commutative,
// so any reduction tree gives the same element).
struct FirstOp {
  template <typename A>
  __device__ __forceinline__ Ranked<A> operator()(const Ranked<A>& a, const Ranked<A>& b) const {
    return ranks_before(b, a) ? b : a;
  }
};

template <typename A>
__device__ __forceinline__ Ranked<A> shuffle_down(Ranked<A> v, int offset) {
  return {__shfl_down_sync(kFullMask, v.value, offset), __shfl_down_sync(kFullMask, v.index, offset)};
}
template <typename A>
__device__ __forceinline__ Ranked<A> shuffle_lane0(Ranked<A> v) {
  return {__shfl_sync(kFullMask, v.value, 0), __shfl_sync(kFullMask, v.index, 0)};
}

// The first-ranked of the block's values, in every thread (block_reduce's rules: blockDim.x a
// multiple of 32, every thread calls it).
template <typename A>
__device__ __forceinline__ Ranked<A> block_first(Ranked<A> v) {
  return block_reduce(v, FirstOp{}, Ranked<A>{A(0), -1});
}

}  // namespace bvllm::cuda
