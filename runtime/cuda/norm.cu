// LayerNorm and the normalization half of RMSNorm over rows of the last dim (the math is in
// runtime/cpu/norm.cc). Statistics and sums are f32 for f32/bf16/f16 rows, f64 for f64.
//
// Row kernels: one block per row, threads striding over the row, block reductions in a fixed
// order. The row is re-read for each pass (mean, variance, write); after the first pass it is
// in L1/L2, so DRAM traffic is about one read of each input and one write.
//
// LayerNorm's gw and gb are column sums over all rows. They are deterministic without float
// atomics: pass 1 splits the rows into at most kMaxParts consecutive parts and each thread sums
// one column of one part in row order into an f32 (f64) scratch [parts, n]; pass 2 sums the
// parts of each column in order. The result depends only on the shape, not on scheduling. Pass 1
// re-reads x and gy (the gx kernel read them too): that costs two extra reads of the inputs, in
// exchange for kernels with no shared-memory limit on n.
#include <type_traits>

#include "runtime/cuda/block_reduce.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/kernels.h"

namespace bvllm::cuda {

namespace {

constexpr int kMaxRowThreads = 512;
constexpr int kColumnThreads = 256;
constexpr int64_t kMaxParts = 256;

template <typename T>
__global__ void layer_norm_kernel(const T* x, const T* w, const T* b, double eps, int64_t n, T* y, acc_t<T>* mean,
                                  acc_t<T>* rstd) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* in = x + row * n;
  T* out = y + row * n;
  A sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += load(in + i);
  const A mu = block_sum(sum) / static_cast<A>(n);
  A sq = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A d = load(in + i) - mu;
    sq += d * d;
  }
  const A rs = A(1) / acc_sqrt(block_sum(sq) / static_cast<A>(n) + static_cast<A>(eps));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    A v = (load(in + i) - mu) * rs;
    if (w) v *= load(w + i);
    if (b) v += load(b + i);
    store(out + i, v);
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// With xhat = (x - mean) * rstd and g = gy * w:  gx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename T>
__global__ void layer_norm_backward_kernel(const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd,
                                           const T* gy, int64_t n, T* gx) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* in = x + row * n;
  const T* g = gy + row * n;
  T* out = gx + row * n;
  const A mu = mean[row], rs = rstd[row];
  A sum_g = 0, sum_gx = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A gi = w ? load(g + i) * load(w + i) : load(g + i);
    sum_g += gi;
    sum_gx += gi * ((load(in + i) - mu) * rs);
  }
  const A mean_g = block_sum(sum_g) / static_cast<A>(n);
  const A mean_gx = block_sum(sum_gx) / static_cast<A>(n);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A gi = w ? load(g + i) * load(w + i) : load(g + i);
    const A xh = (load(in + i) - mu) * rs;
    store(out + i, rs * (gi - mean_g - xh * mean_gx));
  }
}

// Pass 1 of gw = sum_rows(gy * xhat), gb = sum_rows(gy): block (column tile, part); each thread
// sums its column over the part's rows in order. Consecutive threads read consecutive columns.
template <typename T>
__global__ void layer_norm_param_partial_kernel(const T* x, const acc_t<T>* mean, const acc_t<T>* rstd, const T* gy,
                                                int64_t rows, int64_t n, int64_t rows_per_part, acc_t<T>* part_w,
                                                acc_t<T>* part_b) {
  using A = acc_t<T>;
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= n) return;
  const int64_t part = blockIdx.y;
  const int64_t begin = part * rows_per_part;
  const int64_t end = begin + rows_per_part < rows ? begin + rows_per_part : rows;
  A sw = 0, sb = 0;
  for (int64_t r = begin; r < end; ++r) {
    const A g = load(gy + r * n + col);
    sw += g * (load(x + r * n + col) - mean[r]) * rstd[r];
    sb += g;
  }
  if (part_w) part_w[part * n + col] = sw;
  if (part_b) part_b[part * n + col] = sb;
}

// Pass 2: each column's parts summed in part order.
template <typename T>
__global__ void layer_norm_param_final_kernel(const acc_t<T>* part_w, const acc_t<T>* part_b, int64_t parts, int64_t n,
                                              T* gw, T* gb) {
  using A = acc_t<T>;
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= n) return;
  A sw = 0, sb = 0;
  for (int64_t p = 0; p < parts; ++p) {
    if (part_w) sw += part_w[p * n + col];
    if (part_b) sb += part_b[p * n + col];
  }
  if (gw) store(gw + col, sw);
  if (gb) store(gb + col, sb);
}

template <typename T>
__global__ void rms_norm_kernel(const T* x, double eps, int64_t n, T* y, acc_t<T>* rstd) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* in = x + row * n;
  T* out = y + row * n;
  A sq = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A v = load(in + i);
    sq += v * v;
  }
  const A rs = A(1) / acc_sqrt(block_sum(sq) / static_cast<A>(n) + static_cast<A>(eps));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) store(out + i, load(in + i) * rs);
  if (threadIdx.x == 0) rstd[row] = rs;
}

// y = x * rstd, rstd = (mean(x^2) + eps)^-1/2:  gx = rstd * (gy - y * mean(gy * y)).
template <typename T>
__global__ void rms_norm_backward_kernel(const T* x, const acc_t<T>* rstd, const T* gy, int64_t n, T* gx) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* in = x + row * n;
  const T* g = gy + row * n;
  T* out = gx + row * n;
  const A rs = rstd[row];
  A dot = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot += load(g + i) * load(in + i) * rs;
  const A mean_gy = block_sum(dot) / static_cast<A>(n);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    store(out + i, rs * (load(g + i) - load(in + i) * rs * mean_gy));
}

template <typename T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? device_ptr<T>(t) : nullptr;
}

template <typename T>
T* optional_mut_ptr(const Tensor& t) {
  return t.defined() ? device_ptr<T>(t) : nullptr;
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean, Tensor& rstd) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    layer_norm_kernel<T><<<static_cast<unsigned>(rows), row_threads(n, kMaxRowThreads), 0, stream>>>(
        device_ptr<T>(x), optional_ptr<T>(w), optional_ptr<T>(b), eps, n, device_ptr<T>(y), device_ptr<A>(mean),
        device_ptr<A>(rstd));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                         Tensor& gx, Tensor& gw, Tensor& gb) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (n == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    if (gx.defined() && rows > 0) {
      layer_norm_backward_kernel<T><<<static_cast<unsigned>(rows), row_threads(n, kMaxRowThreads), 0, stream>>>(
          device_ptr<T>(x), optional_ptr<T>(w), device_ptr<A>(mean), device_ptr<A>(rstd), device_ptr<T>(gy), n,
          device_ptr<T>(gx));
      BVLLM_CUDA_CHECK_LAUNCH();
    }
    if (!gw.defined() && !gb.defined()) return;
    const int64_t parts = rows < kMaxParts ? (rows > 0 ? rows : 1) : kMaxParts;
    const int64_t rows_per_part = (rows + parts - 1) / parts;
    const DType acc_dtype = std::is_same_v<A, double> ? DType::F64 : DType::F32;
    // Scratch from the allocator: freed (or returned to the cache) after the launches, which is
    // safe because later work on this stream is ordered after them.
    Tensor part_w = gw.defined() ? Tensor::empty({parts, n}, acc_dtype, x.device()) : Tensor();
    Tensor part_b = gb.defined() ? Tensor::empty({parts, n}, acc_dtype, x.device()) : Tensor();
    const unsigned column_blocks = static_cast<unsigned>((n + kColumnThreads - 1) / kColumnThreads);
    layer_norm_param_partial_kernel<T>
        <<<dim3(column_blocks, static_cast<unsigned>(parts)), kColumnThreads, 0, stream>>>(
            device_ptr<T>(x), device_ptr<A>(mean), device_ptr<A>(rstd), device_ptr<T>(gy), rows, n, rows_per_part,
            optional_mut_ptr<A>(part_w), optional_mut_ptr<A>(part_b));
    BVLLM_CUDA_CHECK_LAUNCH();
    layer_norm_param_final_kernel<T><<<column_blocks, kColumnThreads, 0, stream>>>(
        optional_ptr<A>(part_w), optional_ptr<A>(part_b), parts, n, optional_mut_ptr<T>(gw), optional_mut_ptr<T>(gb));
    BVLLM_CUDA_CHECK_LAUNCH();
  });
}

void rms_norm(const Tensor& x, double eps, Tensor& normed, Tensor& rstd) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), row_threads(n, kMaxRowThreads), 0, stream>>>(
        device_ptr<T>(x), eps, n, device_ptr<T>(normed), device_ptr<A>(rstd));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void rms_norm_backward(const Tensor& x, const Tensor& rstd, const Tensor& gy, Tensor& gx) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    rms_norm_backward_kernel<T><<<static_cast<unsigned>(rows), row_threads(n, kMaxRowThreads), 0, stream>>>(
        device_ptr<T>(x), device_ptr<A>(rstd), device_ptr<T>(gy), n, device_ptr<T>(gx));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
