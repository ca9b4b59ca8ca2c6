// Building blocks of the CPU kernels: dtype dispatch, conversions and strided row loops.
#pragma once

#include <glog/logging.h>
#include <omp.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "runtime/tensor.h"

namespace bvllm::cpu {

// Calls f.template operator()<T>() with T the C++ type of `dtype`.
template <typename F>
decltype(auto) visit_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f.template operator()<float>();
    case DType::F64: return f.template operator()<double>();
    case DType::BF16: return f.template operator()<bf16>();
    case DType::F16: return f.template operator()<f16>();
    case DType::I32: return f.template operator()<int32_t>();
    case DType::I64: return f.template operator()<int64_t>();
    case DType::U8: return f.template operator()<uint8_t>();
    case DType::Bool: return f.template operator()<bool>();
  }
  __builtin_unreachable();
}

// f32 and f64 only: the types CPU math kernels are written for (halves are widened first).
template <typename F>
decltype(auto) visit_float(DType dtype, F&& f) {
  if (dtype == DType::F64) return f.template operator()<double>();
  CHECK(dtype == DType::F32) << "CPU math kernel got " << dtype_name(dtype);
  return f.template operator()<float>();
}

template <typename T>
inline float widen(T x) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
    return to_float(x);
  } else {
    return static_cast<float>(x);
  }
}

template <typename To, typename From>
inline To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16>) {
    return convert<To>(to_float(x));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return to_bf16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, f16>) {
    return to_f16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, bool>) {
    return x != From(0);
  } else {
    return static_cast<To>(x);
  }
}

// Rows of an N-tensor elementwise loop: all tensors share `shape`, each has its own strides.
// f(row_offsets, inner_size, inner_strides) runs once per row (the last dim), rows in parallel.
template <size_t N, typename F>
void for_each_row(const Shape& shape, const std::array<const Tensor*, N>& tensors, F&& f) {
  const int64_t rank = static_cast<int64_t>(shape.size());
  const int64_t inner = rank ? shape.back() : 1;
  const int64_t rows = inner ? numel(shape) / inner : 0;
  std::array<int64_t, N> inner_strides;
  for (size_t t = 0; t < N; ++t) inner_strides[t] = rank ? tensors[t]->strides().back() : 1;
  const int64_t work = rows * inner;
#pragma omp parallel for schedule(static) if (work > 32768 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    std::array<int64_t, N> offsets;
    for (size_t t = 0; t < N; ++t) offsets[t] = tensors[t]->offset();
    int64_t rem = r;
    for (int64_t d = rank - 2; d >= 0; --d) {
      int64_t i = rem % shape[d];
      rem /= shape[d];
      for (size_t t = 0; t < N; ++t) offsets[t] += i * tensors[t]->strides()[d];
    }
    f(offsets, inner, inner_strides);
  }
}

// Base pointer of a tensor's storage as T (offsets from for_each_row are added by the caller).
template <typename T>
T* base(const Tensor& t) {
  return static_cast<T*>(t.storage()->data());
}

// Threads worth using for `work` element-operations (avoid forking for tiny loops).
inline bool parallel_worth(int64_t work) { return work > 32768; }

}  // namespace bvllm::cpu
