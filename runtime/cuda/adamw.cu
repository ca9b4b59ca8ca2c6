// Multi-tensor AdamW (the math is optim::adamw_element, runtime/optim/adamw_math.h).
//
// As Apex's multi_tensor_apply (research/cuda-backend.md §5.3), the tensor list travels by value
// as the kernel argument (up to kMaxTensors per launch, under the classic 4 KB parameter limit;
// __grid_constant__ lets threads index it in place instead of copying it to local memory), so no
// table is copied to the device and the host never waits. Every tensor is cut into chunks
// of kChunk elements; block b finds its tensor by binary search over the tensors' first chunk and
// updates one chunk, threads striding over it (coalesced). Each element is read and written once:
// for an f32 param 16 B read + 12 B written, for bf16 with a master 18 B read + 14 B written.
//
// The scalars are cast per block exactly as the CPU casts them per tensor (AdamWCoefficients),
// and the element update is the same function. Results can still differ from the CPU in the
// last bit where nvcc contracts a*b + c into an FMA (it does by default) and the host compiler
// does not.
#include "runtime/cuda/adamw.h"
#include "runtime/cuda/block_reduce.cuh"
#include "runtime/cuda/common.cuh"

namespace bvllm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;
constexpr int kMaxTensors = 32;

struct AdamWBatch {
  AdamWTensor tensors[kMaxTensors];
  int64_t first_chunk[kMaxTensors];  // increasing; tensor i owns chunks [first_chunk[i], first_chunk[i+1])
  int count;
};
static_assert(sizeof(AdamWBatch) <= 4096, "kernel argument over the 4 KB limit");

// P: param type; G: grad type; S: math type (the param's, or f32 with a master copy).
template <typename P, typename G, typename S, bool kMaster>
__global__ void __launch_bounds__(kThreads) adamw_kernel(const __grid_constant__ AdamWBatch batch) {
  const int64_t chunk = blockIdx.x;
  const int lo = chunk_owner(batch.first_chunk, batch.count, chunk);
  const AdamWTensor& t = batch.tensors[lo];
  const optim::AdamWCoefficients<S> c(t.scalars);
  const int64_t begin = (chunk - batch.first_chunk[lo]) * kChunk;
  const int64_t end = begin + kChunk < t.n ? begin + kChunk : t.n;
  P* param = static_cast<P*>(t.param);
  const G* grad = static_cast<const G*>(t.grad);
  S* m = static_cast<S*>(t.exp_avg);
  S* v = static_cast<S*>(t.exp_avg_sq);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const S g = static_cast<S>(load(grad + i));
    if constexpr (kMaster) {
      S p = t.master[i];
      optim::adamw_element(p, g, m[i], v[i], c);
      t.master[i] = p;
      store(param + i, p);  // round to nearest even, as the CPU's to_bf16 / to_f16
    } else {
      optim::adamw_element(param[i], g, m[i], v[i], c);
    }
  }
}

template <typename P, typename G, typename S, bool kMaster>
void launch(cudaStream_t stream, const std::vector<AdamWTensor>& tensors) {
  AdamWBatch batch{};
  int64_t chunks = 0;
  auto flush = [&] {
    if (batch.count == 0) return;
    BVLLM_REQUIRE(chunks <= INT32_MAX, "cuda::adamw: ", chunks, " chunks in one launch");
    adamw_kernel<P, G, S, kMaster><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(batch);
    BVLLM_CUDA_CHECK_LAUNCH();
    batch.count = 0;
    chunks = 0;
  };
  for (const AdamWTensor& t : tensors) {
    if (t.n == 0) continue;
    if (batch.count == kMaxTensors) flush();
    batch.tensors[batch.count] = t;
    batch.first_chunk[batch.count] = chunks;
    ++batch.count;
    chunks += (t.n + kChunk - 1) / kChunk;
  }
  flush();
}

}  // namespace

void adamw(int device, DType param, DType grad, const std::vector<AdamWTensor>& tensors) {
  cudaStream_t stream = current_stream(device);
  if (param == DType::F32 && grad == DType::F32) return launch<float, float, float, false>(stream, tensors);
  if (param == DType::F64 && grad == DType::F64) return launch<double, double, double, false>(stream, tensors);
  if (param == DType::BF16 && grad == DType::BF16)
    return launch<__nv_bfloat16, __nv_bfloat16, float, true>(stream, tensors);
  if (param == DType::BF16 && grad == DType::F32) return launch<__nv_bfloat16, float, float, true>(stream, tensors);
  if (param == DType::F16 && grad == DType::F16) return launch<__half, __half, float, true>(stream, tensors);
  if (param == DType::F16 && grad == DType::F32) return launch<__half, float, float, true>(stream, tensors);
  throw Error(str_cat("cuda::adamw: unsupported param/grad dtypes ", dtype_name(param), "/", dtype_name(grad)));
}

}  // namespace bvllm::cuda
