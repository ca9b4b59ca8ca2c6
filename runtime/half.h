// bf16 and f16 storage types. Arithmetic happens in f32; these only convert.
#pragma once

#include <bit>
#include <cstdint>

namespace bvllm {

struct bf16 {
  uint16_t bits = 0;
};
struct f16 {
  uint16_t bits = 0;
};

// Round to nearest even, NaN -> canonical quiet NaN: the bytes PyTorch's c10::BFloat16 writes.
inline bf16 to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
inline float to_float(bf16 x) { return std::bit_cast<float>(static_cast<uint32_t>(x.bits) << 16); }

// IEEE binary16 with round to nearest even, subnormals and infinities.
inline f16 to_f16(float x) { return f16{std::bit_cast<uint16_t>(static_cast<_Float16>(x))}; }
inline float to_float(f16 x) { return static_cast<float>(std::bit_cast<_Float16>(x.bits)); }

}  // namespace bvllm
