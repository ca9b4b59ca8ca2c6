// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11), the generator curand and
// PyTorch use on GPUs. A draw of n values at generator offset o takes counter blocks
// o .. o + ceil(n/4) - 1 (four 32-bit values a block), so element i of a draw is the same number
// whether one thread or a thousand compute it, on the CPU or the GPU.
#pragma once

#include <array>
#include <cstdint>

#include "runtime/philox.h"  // defines: philox4x32_10, philox_block, uniform_from_u32

namespace bvllm {

// Philox4x32-10 on counter (c0..c3) with key (k0, k1).
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// (seed, stream) pick an independent sequence; offset counts consumed 128-bit blocks.
struct Generator {
  uint64_t seed = 0;
  uint64_t stream = 0;
  uint64_t offset = 0;

  // Reserves blocks for n values and returns the first block index.
  uint64_t reserve(uint64_t n) {
    uint64_t first = offset;
    offset += (n + 3) / 4;
    return first;
  }
  // The 32-bit value i of a draw that starts at block `first`.
  uint32_t u32(uint64_t first, uint64_t i) const;
};

// The generator ops use when a caller has none of its own (dropout inside a model, checkpointing).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace bvllm
