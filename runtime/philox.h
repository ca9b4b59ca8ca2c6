// Philox4x32-10 (Salmon et al., SC'11) and curand's uint32 -> float conversion, written once for
// the host and the device: the CPU kernels (through runtime/rng.h) and the CUDA kernels compute
// the same bits for the same (seed, stream, block).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define BVLLM_HOST_DEVICE __host__ __device__
#else
#define BVLLM_HOST_DEVICE
#endif

namespace bvllm {

// Four 32-bit outputs of one counter block.
struct Philox4 {
  uint32_t v[4];
};

// Philox4x32-10 on counter (c0..c3) with key (k0, k1); constants as Random123 and curand.
BVLLM_HOST_DEVICE inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                               uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Counter block `block` of the (seed, stream) sequence: counter = {block lo, block hi, stream lo,
// stream hi}, key = {seed lo, seed hi}.
BVLLM_HOST_DEVICE inline Philox4 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), static_cast<uint32_t>(stream),
                       static_cast<uint32_t>(stream >> 32), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1], as curand_uniform converts: x * 2^-32 + 2^-33 in f32. The product is exact (a
// power-of-two scale), so a fused multiply-add would round the same; the device still spells out
// the two roundings so that no compiler contraction can change a bit.
BVLLM_HOST_DEVICE inline float uniform_from_u32(uint32_t x) {
  constexpr float kScale = 2.3283064365386963e-10f;  // 2^-32
  constexpr float kHalf = 1.1641532182693481e-10f;   // 2^-33
#ifdef __CUDA_ARCH__
  return __fadd_rn(__fmul_rn(static_cast<float>(x), kScale), kHalf);
#else
  return static_cast<float>(x) * kScale + kHalf;
#endif
}

}  // namespace bvllm
