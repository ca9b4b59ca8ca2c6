// Device-side helpers shared by the CUDA kernels: dtype dispatch to device types, loads and
// stores through f32, and strided indexing. Include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "runtime/cuda/stream.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

namespace bvllm::cuda {

// Calls f.template operator()<T>() with T the device type of a floating dtype.
template <typename F>
decltype(auto) visit_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f.template operator()<float>();
    case DType::F64: return f.template operator()<double>();
    case DType::BF16: return f.template operator()<__nv_bfloat16>();
    case DType::F16: return f.template operator()<__half>();
    default: throw Error(str_cat("CUDA kernel: expected a floating dtype, got ", dtype_name(dtype)));
  }
}

// Calls f.template operator()<T>() with T the device type of any dtype.
template <typename F>
decltype(auto) visit_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::I32: return f.template operator()<int32_t>();
    case DType::I64: return f.template operator()<int64_t>();
    case DType::U8: return f.template operator()<uint8_t>();
    case DType::Bool: return f.template operator()<bool>();
    default: return visit_float(dtype, std::forward<F>(f));
  }
}

// Arithmetic type for T: halves compute in f32, f64 in f64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

template <typename T>
__device__ __forceinline__ acc_t<T> load(const T* p) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(*p);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(*p);
  } else {
    return static_cast<acc_t<T>>(*p);
  }
}

// Round to nearest even, as the CPU's to_bf16/to_f16.
template <typename T, typename V>
__device__ __forceinline__ void store(T* p, V v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    *p = __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __half>) {
    *p = __float2half_rn(static_cast<float>(v));
  } else {
    *p = static_cast<T>(v);
  }
}

template <typename T>
T* device_ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());  // at offset()
}

// Shape and strides passed by value to a kernel (rank <= 8).
constexpr int kMaxRank = 8;
struct Strided {
  int rank;
  int64_t shape[kMaxRank];
  int64_t strides[kMaxRank];
  int64_t offset;  // elements from the storage base
};

inline Strided describe(const Tensor& t) {
  BVLLM_REQUIRE(t.dim() <= kMaxRank, "CUDA kernel: tensors of rank > ", kMaxRank, " are not supported");
  Strided s{static_cast<int>(t.dim()), {}, {}, t.offset()};
  for (int i = 0; i < s.rank; ++i) {
    s.shape[i] = t.shape()[i];
    s.strides[i] = t.strides()[i];
  }
  return s;
}

// Storage offset of logical (row-major) element `flat`.
__device__ __forceinline__ int64_t element_offset(const Strided& s, int64_t flat) {
  int64_t off = s.offset;
  for (int d = s.rank - 1; d >= 0; --d) {
    off += (flat % s.shape[d]) * s.strides[d];
    flat /= s.shape[d];
  }
  return off;
}

template <typename T>
T* storage_ptr(const Tensor& t) {
  return static_cast<T*>(t.storage()->data());  // base: add element_offset
}

#define BVLLM_GRID_STRIDE_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

}  // namespace bvllm::cuda
