// Softmax and log-softmax over rows of the last dim: one block per row.
//
// Forward reads the row once for the online (max, sum exp) normalizer and once more to write,
// so it moves 2 reads + 1 write per element (the second read mostly hits L2 for rows up to a
// few hundred KB). Backward reads y and gy twice and writes gx once. Sums are f32 for
// f32/bf16/f16 (f64 for f64); the CPU reference sums f32 rows in f64, so f32 results agree to
// rounding, not bit for bit. Edge cases follow runtime/cpu/softmax.cc: an all -inf row uses max 0
// and sum 0 (giving NaN, as the CPU and torch do); a +inf or NaN element makes the row NaN.
#include "runtime/cuda/block_reduce.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/kernels.h"

namespace bvllm::cuda {

namespace {

template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t n, bool log) {
  using A = acc_t<T>;
  const T* in = x + blockIdx.x * n;
  T* out = y + blockIdx.x * n;
  MaxSum<A> ms{-static_cast<A>(INFINITY), A(0)};
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) max_sum_add(ms, load(in + i));
  ms = block_reduce(ms, MaxSumOp{}, MaxSum<A>{-static_cast<A>(INFINITY), A(0)});
  A mx = ms.max, total = ms.sum;
  if (mx == -static_cast<A>(INFINITY)) mx = 0;         // cpu: an all -inf row
  if (mx == static_cast<A>(INFINITY)) total = A(NAN);  // cpu: exp(inf - inf)
  if (log) {
    const A lse = mx + acc_log(total);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) store(out + i, load(in + i) - lse);
  } else {
    const A inv = A(1) / total;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) store(out + i, acc_exp(load(in + i) - mx) * inv);
  }
}

// softmax: gx = y * (gy - sum(gy * y));  log_softmax: gx = gy - exp(y) * sum(gy).
template <typename T>
__global__ void softmax_backward_kernel(const T* y, const T* gy, T* gx, int64_t n, bool log) {
  using A = acc_t<T>;
  const T* yr = y + blockIdx.x * n;
  const T* gr = gy + blockIdx.x * n;
  T* out = gx + blockIdx.x * n;
  A dot = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot += log ? load(gr + i) : load(gr + i) * load(yr + i);
  dot = block_sum(dot);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A g = load(gr + i), yi = load(yr + i);
    store(out + i, log ? g - acc_exp(yi) * dot : yi * (g - dot));
  }
}

}  // namespace

void softmax(const Tensor& x, Tensor& y, bool log) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  const int threads = row_threads(n, 1024);
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    softmax_kernel<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(device_ptr<T>(x), device_ptr<T>(y), n, log);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void softmax_backward(const Tensor& y, const Tensor& gy, Tensor& gx, bool log) {
  const int64_t n = y.size(-1), rows = n ? y.numel() / n : 0;
  if (rows == 0) return;
  const int threads = row_threads(n, 1024);
  cudaStream_t stream = current_stream(y.device().index);
  visit_float(y.dtype(), [&]<typename T>() {
    softmax_backward_kernel<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(device_ptr<T>(y), device_ptr<T>(gy),
                                                                                    device_ptr<T>(gx), n, log);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
