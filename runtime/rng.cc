#include "runtime/rng.h"

namespace bvllm {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  Philox4 out = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
  return {out.v[0], out.v[1], out.v[2], out.v[3]};
}

uint32_t Generator::u32(uint64_t first, uint64_t i) const { return philox_block(seed, stream, first + i / 4).v[i % 4]; }

Generator& default_generator() {
  static Generator gen;
  return gen;
}

void manual_seed(uint64_t seed) { default_generator() = Generator{seed, 0, 0}; }

}  // namespace bvllm
