// Σ |g|^p (or max |g|) over many CUDA gradients, for gradient-norm clipping.
//
// Multi-tensor, as runtime/cuda/adamw.cu: tensors of one dtype travel by value in the kernel
// argument, cut into chunks of kChunk elements, one block per chunk. Each thread accumulates in
// f64, the block reduces in a fixed tree and writes one partial per chunk; one final block
// combines the partials of all launches in order. The result therefore does not depend on
// scheduling. Each gradient element is read once (coalesced); the partials are 8 B per kChunk
// elements.
#include <cmath>
#include <map>

#include "runtime/cuda/block_reduce.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/grad_norm.h"

namespace bvllm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 64;
constexpr int kMaxTensors = 160;

enum class NormKind { SumSquares, SumPow, Max };

struct NormBatch {
  const void* data[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t first_chunk[kMaxTensors];  // increasing; tensor i owns chunks [first_chunk[i], first_chunk[i+1])
  int count;
};
static_assert(sizeof(NormBatch) <= 4096, "kernel argument over the 4 KB limit");

// NaN-propagating max, as torch's abs().max() and runtime/cpu/grad_norm.cc.
struct NanMaxOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return (isnan(a) || a > b) ? a : b; }
};

template <typename T, NormKind kKind>
__global__ void __launch_bounds__(kThreads)
    norm_partial_kernel(const __grid_constant__ NormBatch batch, double p, double* partials) {
  const int64_t chunk = blockIdx.x;
  const int lo = chunk_owner(batch.first_chunk, batch.count, chunk);
  const T* x = static_cast<const T*>(batch.data[lo]);
  const int64_t begin = (chunk - batch.first_chunk[lo]) * kChunk;
  const int64_t end = begin + kChunk < batch.n[lo] ? begin + kChunk : batch.n[lo];
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double v = static_cast<double>(load(x + i));
    if constexpr (kKind == NormKind::SumSquares) {
      acc += v * v;
    } else if constexpr (kKind == NormKind::SumPow) {
      acc += pow(fabs(v), p);
    } else {
      acc = NanMaxOp{}(acc, fabs(v));
    }
  }
  if constexpr (kKind == NormKind::Max) {
    acc = block_reduce(acc, NanMaxOp{}, 0.0);
  } else {
    acc = block_sum(acc);
  }
  if (threadIdx.x == 0) partials[chunk] = acc;
}

// One block: thread i combines partials i, i + blockDim.x, ... in order, then the block reduces.
template <NormKind kKind>
__global__ void norm_final_kernel(const double* partials, int64_t count, double* result) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    if constexpr (kKind == NormKind::Max) {
      acc = NanMaxOp{}(acc, partials[i]);
    } else {
      acc += partials[i];
    }
  }
  if constexpr (kKind == NormKind::Max) {
    acc = block_reduce(acc, NanMaxOp{}, 0.0);
  } else {
    acc = block_sum(acc);
  }
  if (threadIdx.x == 0) *result = acc;
}

// Calls f.template operator()<K>() with K the NormKind for p.
template <typename F>
decltype(auto) visit_kind(double p, F&& f) {
  if (std::isinf(p)) return f.template operator()<NormKind::Max>();
  if (p == 2.0) return f.template operator()<NormKind::SumSquares>();
  return f.template operator()<NormKind::SumPow>();
}

int64_t chunks_of(const Tensor& t) { return (t.numel() + kChunk - 1) / kChunk; }

}  // namespace

double norm_partial(int device, const std::vector<Tensor>& tensors, double p) {
  BVLLM_REQUIRE(p > 0.0, "cuda::norm_partial: p = ", p, " (expected > 0 or infinity)");
  // Group by dtype (in dtype order, so the partials' order is fixed) and count the chunks.
  std::map<DType, std::vector<const Tensor*>> by_dtype;
  int64_t total_chunks = 0;
  for (const Tensor& t : tensors) {
    BVLLM_REQUIRE(t.device() == Device::cuda(device) && t.is_contiguous(), "cuda::norm_partial: expected contiguous ",
                  Device::cuda(device).str(), " tensors, got one on ", t.device().str());
    if (t.numel() == 0) continue;
    by_dtype[t.dtype()].push_back(&t);
    total_chunks += chunks_of(t);
  }
  if (total_chunks == 0) return 0.0;
  BVLLM_REQUIRE(total_chunks <= INT32_MAX, "cuda::norm_partial: ", total_chunks, " chunks");
  cudaStream_t stream = current_stream(device);
  Tensor partials = Tensor::empty({total_chunks + 1}, DType::F64, Device::cuda(device));  // + the result
  double* partial_ptr = device_ptr<double>(partials);

  int64_t written = 0;  // partials before the current launch
  for (const auto& [dtype, list] : by_dtype) {
    visit_float(dtype, [&]<typename T>() {
      NormBatch batch{};
      int64_t chunks = 0;
      auto flush = [&] {
        if (batch.count == 0) return;
        visit_kind(p, [&]<NormKind K>() {
          norm_partial_kernel<T, K>
              <<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(batch, p, partial_ptr + written);
        });
        BVLLM_CUDA_CHECK_LAUNCH();
        written += chunks;
        batch.count = 0;
        chunks = 0;
      };
      for (const Tensor* t : list) {
        if (batch.count == kMaxTensors) flush();
        batch.data[batch.count] = t->raw_data();
        batch.n[batch.count] = t->numel();
        batch.first_chunk[batch.count] = chunks;
        ++batch.count;
        chunks += chunks_of(*t);
      }
      flush();
    });
  }
  double* result = partial_ptr + total_chunks;
  visit_kind(p, [&]<NormKind K>() { norm_final_kernel<K><<<1, 1024, 0, stream>>>(partial_ptr, total_chunks, result); });
  BVLLM_CUDA_CHECK_LAUNCH();
  double host = 0.0;
  BVLLM_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, stream));
  BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace bvllm::cuda
