// Reductions over the middle dim of a contiguous [outer, n, inner] tensor, and scatter_add, on
// the GPU (runtime/cpu/reduce.cc is the reference). Everything here is deterministic: the order of
// additions depends only on the shapes, never on scheduling or the device model.
//
// sum_dim accumulates in f64 for every dtype, as the CPU does for f32 and f64, then rounds once.
//   inner == 1 (rows): a 256-thread block per row (or per chunk of a long row when there are few
//   rows; the chunk sums land in an f64 scratch that a second launch adds up in order).
//   inner > 1 (columns): a thread per output column walking n with coalesced loads across the
//   columns; when there are few columns, n is split into chunks the same two-pass way.
// max_dim: the first maximum, NaN wins (the first NaN), as the CPU's sequential scan. Rows use a
//   block per row with a (value, index) reduction under that total order (Ranked in loops.cuh),
//   which picks the same element as the scan; columns a thread each running the scan itself.
// scatter_add: a thread per (outer, inner) column adds its n_idx sources in index order, so no
//   two threads touch one output and the f32/f64 sums are bit-identical to the CPU's. bf16/f16
//   outputs accumulate in an f32 copy that is rounded back once. Parallelism is outer * inner
//   columns, each serial over n_idx: fine for the backward of gather/max/topk, slow for a 1-D
//   scatter of millions of elements.
#include <algorithm>

#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"

namespace bvllm::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ double as_double(const T* p) {
  return static_cast<double>(load(p));
}
__device__ __forceinline__ double as_double(const double* p) { return *p; }

// out[r * chunks + c] = sum of x[r * n + c * chunk_len ...] over one chunk: a block per (r, c).
template <typename In, typename Out>
__global__ void row_sum_kernel(const In* __restrict__ x, Out* __restrict__ out, int64_t rows, int64_t n, int64_t chunks,
                               int64_t chunk_len) {
  for (int64_t b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
    const int64_t r = b / chunks, c = b % chunks;
    const int64_t begin = c * chunk_len, end = min(n, begin + chunk_len);
    const In* row = x + r * n;
    double acc = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) acc += as_double(row + i);
    acc = block_sum(acc);
    if (threadIdx.x == 0) store(out + b, acc);
  }
}

// out[(o * chunks + c) * inner + j] = sum over one chunk of n of x[(o * n + i) * inner + j].
template <typename In, typename Out>
__global__ void column_sum_kernel(const In* __restrict__ x, Out* __restrict__ out, int64_t outer, int64_t n,
                                  int64_t inner, int64_t chunks, int64_t chunk_len) {
  BVLLM_GRID_STRIDE_LOOP(idx, outer * chunks * inner) {
    const int64_t j = idx % inner, oc = idx / inner;
    const int64_t o = oc / chunks, c = oc % chunks;
    const int64_t begin = c * chunk_len, end = min(n, begin + chunk_len);
    const In* p = x + o * n * inner + j;
    double acc = 0;
    for (int64_t i = begin; i < end; ++i) acc += as_double(p + i * inner);
    store(out + idx, acc);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__global__ void row_max_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices,
                               int64_t rows, int64_t n) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * n;
    Ranked<acc_t<T>> best{acc_t<T>(0), -1};
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const Ranked<acc_t<T>> v{load(row + i), i};
      if (ranks_before(v, best)) best = v;
    }
    best = block_first(best);
    if (threadIdx.x == 0) {
      values[r] = row[best.index];
      indices[r] = best.index;
    }
  }
}

template <typename T>
__global__ void column_max_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices,
                                  int64_t outer, int64_t n, int64_t inner) {
  BVLLM_GRID_STRIDE_LOOP(idx, outer * inner) {
    const int64_t o = idx / inner, j = idx % inner;
    const T* p = x + o * n * inner + j;
    acc_t<T> best = load(p);
    int64_t arg = 0;
    for (int64_t i = 1; i < n; ++i) {
      const acc_t<T> v = load(p + i * inner);
      if (v > best || (v != v && best == best)) {  // the CPU's test, verbatim
        best = v;
        arg = i;
      }
    }
    values[idx] = p[arg * inner];
    indices[idx] = arg;
  }
}

// out[o, index[o, i, j], j] += src[o, i, j], i in order, one thread per (o, j).
template <typename O, typename S>
__global__ void scatter_add_kernel(O* __restrict__ out, const int64_t* __restrict__ index, const S* __restrict__ src,
                                   int64_t outer, int64_t n_idx, int64_t inner, int64_t n_out) {
  BVLLM_GRID_STRIDE_LOOP(col, outer * inner) {
    const int64_t o = col / inner, j = col % inner;
    for (int64_t i = 0; i < n_idx; ++i) {
      const int64_t at = (o * n_idx + i) * inner + j;
      O* dst = out + (o * n_out + index[at]) * inner + j;
      *dst = *dst + static_cast<O>(load(src + at));
    }
  }
}

}  // namespace

void sum_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& out) {
  BVLLM_REQUIRE(x.is_contiguous() && out.is_contiguous(), "cuda::sum_dim: expected contiguous tensors");
  if (outer * inner == 0) return;
  const Device device = x.device();
  cudaStream_t stream = current_stream(device.index);
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = device_ptr<const T>(x);
    T* op = device_ptr<T>(out);
    if (inner == 1) {
      // Few long rows: split each into chunks so that about 1024 blocks run.
      const int64_t chunks =
          std::clamp<int64_t>(ceil_div(1024, outer), 1, std::max<int64_t>(1, ceil_div(n, 8 * kThreads)));
      const int64_t chunk_len = ceil_div(n, chunks);
      if (chunks == 1) {
        row_sum_kernel<T, T><<<blocks_for(outer, 1), kThreads, 0, stream>>>(xp, op, outer, n, 1, n);
      } else {
        Tensor scratch = Tensor::empty({outer * chunks}, DType::F64, device);
        double* sp = device_ptr<double>(scratch);
        row_sum_kernel<T, double>
            <<<blocks_for(outer * chunks, 1), kThreads, 0, stream>>>(xp, sp, outer, n, chunks, chunk_len);
        BVLLM_CUDA_CHECK_LAUNCH();
        row_sum_kernel<double, T><<<blocks_for(outer, 1), kThreads, 0, stream>>>(sp, op, outer, chunks, 1, chunks);
      }
    } else {
      // Few columns: split n into chunks (of at least 32 rows) so that about 64K threads run.
      const int64_t chunks =
          std::clamp<int64_t>(ceil_div(65536, outer * inner), 1, std::max<int64_t>(1, ceil_div(n, 32)));
      const int64_t chunk_len = ceil_div(n, chunks);
      if (chunks == 1) {
        column_sum_kernel<T, T><<<blocks_for(outer * inner), kThreads, 0, stream>>>(xp, op, outer, n, inner, 1, n);
      } else {
        Tensor scratch = Tensor::empty({outer * chunks * inner}, DType::F64, device);
        double* sp = device_ptr<double>(scratch);
        column_sum_kernel<T, double>
            <<<blocks_for(outer * chunks * inner), kThreads, 0, stream>>>(xp, sp, outer, n, inner, chunks, chunk_len);
        BVLLM_CUDA_CHECK_LAUNCH();
        column_sum_kernel<double, T>
            <<<blocks_for(outer * inner), kThreads, 0, stream>>>(sp, op, outer, chunks, inner, 1, chunks);
      }
    }
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void max_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& values, Tensor& indices) {
  BVLLM_REQUIRE(x.is_contiguous() && values.is_contiguous() && indices.is_contiguous(),
                "cuda::max_dim: expected contiguous tensors");
  BVLLM_REQUIRE(n > 0, "cuda::max_dim: cannot reduce an empty dim");
  if (outer * inner == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    if (inner == 1) {
      row_max_kernel<T><<<blocks_for(outer, 1), kThreads, 0, stream>>>(device_ptr<const T>(x), device_ptr<T>(values),
                                                                       device_ptr<int64_t>(indices), outer, n);
    } else {
      column_max_kernel<T><<<blocks_for(outer * inner), kThreads, 0, stream>>>(
          device_ptr<const T>(x), device_ptr<T>(values), device_ptr<int64_t>(indices), outer, n, inner);
    }
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void scatter_add(Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  BVLLM_REQUIRE(out.is_contiguous() && index.is_contiguous() && src.is_contiguous() && index.dtype() == DType::I64,
                "cuda::scatter_add: expected contiguous tensors and an i64 index");
  const DimSplit s = split_at(index.shape(), dim);
  const int64_t n_out = out.shape()[dim];
  if (s.outer * s.inner == 0 || s.size == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  const int64_t* ip = device_ptr<const int64_t>(index);
  visit_float(out.dtype(), [&]<typename T>() {
    if constexpr (is_half_v<T>) {
      Tensor acc = Tensor::empty(out.shape(), DType::F32, out.device());
      copy(out, acc);
      scatter_add_kernel<float, T><<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
          device_ptr<float>(acc), ip, device_ptr<const T>(src), s.outer, s.size, s.inner, n_out);
      BVLLM_CUDA_CHECK_LAUNCH();
      copy(acc, out);
    } else {
      scatter_add_kernel<T, T><<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
          device_ptr<T>(out), ip, device_ptr<const T>(src), s.outer, s.size, s.inner, n_out);
    }
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
