// Philox-driven fills on the GPU, the same streams as runtime/cpu/random.cc: value i of a draw
// that starts at block `first` is lane i % 4 of Philox block first + i / 4 (runtime/philox.h, the
// code the CPU runs too). One thread computes one block and writes the elements that use it.
//
// The u32 values and the f32 uniforms are bit-identical to the CPU's. The distributions then do
// the CPU's f64 math in the same order, with explicit _rn operations so that nvcc does not fuse a
// multiply and an add the CPU rounds separately. log and cos of CUDA's libdevice are within 1-2
// ulp of glibc's, so f64 normals and Gumbels may differ from the CPU in the last bit; f32 results
// (rounded from those f64 values) match except in rare ties; uniforms and masks match exactly.
#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"
#include "runtime/philox.h"

namespace bvllm::cuda {

namespace {

constexpr double kTwoPi = 2.0 * 3.14159265358979323846;  // 2.0 * M_PI, as the CPU folds it
constexpr double kBelowOne = 1.0 - 1.0 / 16777216.0;     // 1 - 2^-24

template <typename T>
__global__ void fill_random_kernel(T* p, int64_t n, Distribution dist, double a, double b, uint64_t seed,
                                   uint64_t stream, uint64_t first) {
  // Normal takes two uniforms per element (u32 values 2i, 2i+1: one block serves two
  // elements); the others one (a block serves four).
  const int per_block = dist == Distribution::Normal ? 2 : 4;
  const int64_t blocks = (n + per_block - 1) / per_block;
  BVLLM_GRID_STRIDE_LOOP(blk, blocks) {
    const Philox4 r = philox_block(seed, stream, first + static_cast<uint64_t>(blk));
    for (int j = 0; j < per_block; ++j) {
      const int64_t i = blk * per_block + j;
      if (i >= n) break;
      double v;
      if (dist == Distribution::Normal) {
        const double u = uniform_from_u32(r.v[2 * j]), u2 = uniform_from_u32(r.v[2 * j + 1]);
        // a + b * sqrt(-2 log u) * cos(2 pi u2), left to right as the CPU evaluates it.
        const double radius = sqrt(__dmul_rn(-2.0, log(u)));
        v = __dadd_rn(a, __dmul_rn(__dmul_rn(b, radius), cos(__dmul_rn(kTwoPi, u2))));
      } else {
        const double u = uniform_from_u32(r.v[j]);  // (0, 1]
        if (dist == Distribution::Uniform) {
          v = __dadd_rn(a, __dmul_rn(b - a, 1.0 - u));  // [a, b)
        } else {
          // Gumbel: E = -log(u) ~ Exp(1), u kept below 1 so that E > 0 and -log(E) is finite.
          v = -log(-log(fmin(u, kBelowOne)));
        }
      }
      store(p + i, v);
    }
  }
}

__global__ void dropout_mask_kernel(uint8_t* m, int64_t n, double p, uint64_t seed, uint64_t stream, uint64_t first) {
  const int64_t blocks = (n + 3) / 4;
  BVLLM_GRID_STRIDE_LOOP(blk, blocks) {
    const Philox4 r = philox_block(seed, stream, first + static_cast<uint64_t>(blk));
    for (int j = 0; j < 4; ++j) {
      const int64_t i = blk * 4 + j;
      if (i < n) m[i] = uniform_from_u32(r.v[j]) > p;  // 1 = keep
    }
  }
}

}  // namespace

void fill_random(Tensor& t, Generator& gen, Distribution dist, double a, double b) {
  BVLLM_REQUIRE(t.is_contiguous(), "cuda::fill_random: expected a contiguous tensor");
  const int64_t n = t.numel();
  const int64_t per = dist == Distribution::Normal ? 2 : 1;
  const uint64_t first = gen.reserve(static_cast<uint64_t>(n * per));  // advances even for n == 0, as the CPU
  if (n == 0) return;
  const int64_t blocks = (n * per + 3) / 4;
  cudaStream_t stream = current_stream(t.device().index);
  visit_float(t.dtype(), [&]<typename T>() {
    fill_random_kernel<T>
        <<<blocks_for(blocks), 256, 0, stream>>>(device_ptr<T>(t), n, dist, a, b, gen.seed, gen.stream, first);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void dropout_mask(Tensor& mask, Generator& gen, double p) {
  BVLLM_REQUIRE(mask.is_contiguous() && mask.dtype() == DType::U8,
                "cuda::dropout_mask: expected a contiguous u8 mask, got ", dtype_name(mask.dtype()));
  const int64_t n = mask.numel();
  const uint64_t first = gen.reserve(static_cast<uint64_t>(n));
  if (n == 0) return;
  cudaStream_t stream = current_stream(mask.device().index);
  dropout_mask_kernel<<<blocks_for((n + 3) / 4), 256, 0, stream>>>(device_ptr<uint8_t>(mask), n, p, gen.seed,
                                                                   gen.stream, first);
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
