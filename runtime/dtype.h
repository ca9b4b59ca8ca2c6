// Element types. CPU kernels compute bf16 and f16 through f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/half.h"

namespace bvllm {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64, U8, Bool };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "f32", "bf16", ...
bool is_floating(DType t);
inline bool is_half(DType t) { return t == DType::BF16 || t == DType::F16; }

// C++ type for each dtype, for typed access: data<float>(), item<int64_t>() ...
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::BF16;
}
template <>
constexpr DType dtype_of<f16>() {
  return DType::F16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::I64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::U8;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::Bool;
}

}  // namespace bvllm
