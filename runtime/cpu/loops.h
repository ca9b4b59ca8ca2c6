// Building blocks of the CPU kernels: dtype dispatch, conversions and strided row loops.
#pragma once

#include <glog/logging.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

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

// Threads worth using for `work` element-operations (avoid forking for tiny loops).
inline bool parallel_worth(int64_t work) { return work > 32768; }

// Rows of an N-tensor elementwise loop: all tensors share `shape`, each has its own strides.
// f(row_offsets, n, inner_strides) runs once per row piece, pieces in parallel; f must treat each
// of the n elements alone (it sees element i at offset + i * stride), which every caller does.
//
// Dims are coalesced first: a dim merges into the next inner one when every tensor steps over it
// exactly as over a whole run of the inner one (stride[d] == stride[d + 1] * shape[d + 1]), and
// size-1 dims drop out, so a contiguous [336, 597, 3] copy is one row of 601,776 elements rather
// than 200,592 rows of 3. Long rows are then cut into pieces so that a tensor that coalesced into
// a few rows still spreads over the threads.
template <size_t N, typename F>
void for_each_row(const Shape& shape, const std::array<const Tensor*, N>& tensors, F&& f) {
  const int64_t total = numel(shape);
  if (total == 0) return;
  std::vector<int64_t> dims;
  std::array<std::vector<int64_t>, N> strides;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !dims.empty();
    for (size_t t = 0; t < N && merge; ++t) merge = strides[t].back() == tensors[t]->strides()[d] * shape[d];
    if (merge) {
      dims.back() *= shape[d];
      for (size_t t = 0; t < N; ++t) strides[t].back() = tensors[t]->strides()[d];
      continue;
    }
    dims.push_back(shape[d]);
    for (size_t t = 0; t < N; ++t) strides[t].push_back(tensors[t]->strides()[d]);
  }
  if (dims.empty()) {  // every dim is 1: one element
    dims.push_back(1);
    for (size_t t = 0; t < N; ++t) strides[t].push_back(1);
  }
  const int64_t rank = static_cast<int64_t>(dims.size());
  const int64_t inner = dims.back(), rows = total / inner;
  std::array<int64_t, N> inner_strides;
  for (size_t t = 0; t < N; ++t) inner_strides[t] = strides[t].back();
  constexpr int64_t kMinPiece = 4096, kPiecesWanted = 16;
  const int64_t pieces =
      (parallel_worth(total) && rows < kPiecesWanted)
          ? std::max<int64_t>(1, std::min((inner + kMinPiece - 1) / kMinPiece, (kPiecesWanted + rows - 1) / rows))
          : 1;
  const int64_t piece = (inner + pieces - 1) / pieces;
#pragma omp parallel for schedule(static) if (parallel_worth(total) && rows * pieces > 1)
  for (int64_t job = 0; job < rows * pieces; ++job) {
    const int64_t r = job / pieces, start = (job % pieces) * piece;
    const int64_t n = std::min(piece, inner - start);
    if (n <= 0) continue;
    std::array<int64_t, N> offsets;
    for (size_t t = 0; t < N; ++t) offsets[t] = tensors[t]->offset() + start * inner_strides[t];
    int64_t rem = r;
    for (int64_t d = rank - 2; d >= 0; --d) {
      const int64_t i = rem % dims[d];
      rem /= dims[d];
      for (size_t t = 0; t < N; ++t) offsets[t] += i * strides[t][d];
    }
    f(offsets, n, inner_strides);
  }
}

// Base pointer of a tensor's storage as T (offsets from for_each_row are added by the caller).
template <typename T>
T* base(const Tensor& t) {
  return static_cast<T*>(t.storage()->data());
}

}  // namespace bvllm::cpu
