// Indexing kernels on the GPU (runtime/cpu/index.cc is the reference): tensors contiguous and
// viewed as [outer, n, inner] around the indexed dim, indices i64 and already range-checked by
// the op front-ends (runtime/ops/index.cc).
//
// index_select, gather, where: a thread per output element, moving raw elements (by size).
// index_add: a thread per (outer, inner) column adds its n_idx rows in index order, so no two
//   threads write one output and f32/f64 results are bit-identical to the CPU's; bf16/f16 outputs
//   accumulate in an f32 copy rounded back once. Serial over n_idx per column (see scatter_add).
// topk: a block per row picks the k first elements one pass at a time, each pass taking the
//   first-ranked element ranked after the previous pick (values compared in f64 as the CPU does,
//   larger first, lower index among equals, NaN first). O(k * n) reads per row: meant for k much
//   smaller than n (sampling, routing); no limit on n, no extra memory.
#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"

namespace bvllm::cuda {

namespace {

// Calls f.template operator()<U>() with U an unsigned type of the element size: raw moves.
template <typename F>
void visit_size(DType dtype, F&& f) {
  switch (dtype_size(dtype)) {
    case 1: return f.template operator()<uint8_t>();
    case 2: return f.template operator()<uint16_t>();
    case 4: return f.template operator()<uint32_t>();
    case 8: return f.template operator()<uint64_t>();
    default: throw Error(str_cat("CUDA kernel: unexpected element size ", dtype_size(dtype)));
  }
}

template <typename U>
__global__ void index_select_kernel(const U* __restrict__ a, const int64_t* __restrict__ index, U* __restrict__ out,
                                    int64_t outer, int64_t n_in, int64_t n_idx, int64_t inner) {
  BVLLM_GRID_STRIDE_LOOP(at, outer * n_idx * inner) {
    const int64_t j = at % inner, oi = at / inner;
    const int64_t o = oi / n_idx, i = oi % n_idx;
    out[at] = a[(o * n_in + index[i]) * inner + j];
  }
}

// out[o, index[i], j] += src[o, i, j], i in order, one thread per (o, j).
template <typename O, typename S>
__global__ void index_add_kernel(O* __restrict__ out, const int64_t* __restrict__ index, const S* __restrict__ src,
                                 int64_t outer, int64_t n_out, int64_t n_idx, int64_t inner) {
  BVLLM_GRID_STRIDE_LOOP(col, outer * inner) {
    const int64_t o = col / inner, j = col % inner;
    for (int64_t i = 0; i < n_idx; ++i) {
      O* dst = out + (o * n_out + index[i]) * inner + j;
      *dst = *dst + static_cast<O>(load(src + (o * n_idx + i) * inner + j));
    }
  }
}

template <typename U>
__global__ void gather_kernel(const U* __restrict__ a, const int64_t* __restrict__ index, U* __restrict__ out,
                              int64_t outer, int64_t n_in, int64_t n_idx, int64_t inner) {
  BVLLM_GRID_STRIDE_LOOP(at, outer * n_idx * inner) {
    const int64_t j = at % inner, o = at / inner / n_idx;
    out[at] = a[(o * n_in + index[at]) * inner + j];
  }
}

template <typename U>
__global__ void where_kernel(const bool* cond, const U* a, const U* b, U* out, OffsetCalc<4> calc, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    int64_t off[4];
    calc.offsets(i, off);
    out[off[3]] = cond[off[0]] ? a[off[1]] : b[off[2]];
  }
}

template <typename T>
__global__ void topk_kernel(const T* __restrict__ a, T* __restrict__ values, int64_t* __restrict__ indices,
                            int64_t rows, int64_t n, int64_t k) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = a + r * n;
    Ranked<double> prev{0.0, -1};  // the previous pick, in every thread
    for (int64_t p = 0; p < k; ++p) {
      Ranked<double> best{0.0, -1};
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const Ranked<double> v{convert<double>(row[i]), i};
        if ((prev.index < 0 || ranks_before(prev, v)) && ranks_before(v, best)) best = v;
      }
      prev = block_first(best);
      if (threadIdx.x == 0) {
        values[r * k + p] = row[prev.index];
        indices[r * k + p] = prev.index;
      }
    }
  }
}

}  // namespace

void index_select(const Tensor& a, int dim, const Tensor& index, Tensor& out) {
  BVLLM_REQUIRE(a.is_contiguous() && index.is_contiguous() && out.is_contiguous() && index.dtype() == DType::I64,
                "cuda::index_select: expected contiguous tensors and an i64 index");
  const DimSplit s = split_at(a.shape(), dim);
  const int64_t n_idx = index.numel(), total = s.outer * n_idx * s.inner;
  if (total == 0) return;
  cudaStream_t stream = current_stream(a.device().index);
  visit_size(a.dtype(), [&]<typename U>() {
    index_select_kernel<U><<<blocks_for(total), 256, 0, stream>>>(
        device_ptr<const U>(a), device_ptr<const int64_t>(index), device_ptr<U>(out), s.outer, s.size, n_idx, s.inner);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void index_add(Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  BVLLM_REQUIRE(out.is_contiguous() && index.is_contiguous() && src.is_contiguous() && index.dtype() == DType::I64,
                "cuda::index_add: expected contiguous tensors and an i64 index");
  const DimSplit s = split_at(out.shape(), dim);
  const int64_t n_idx = index.numel();
  if (s.outer * s.inner == 0 || n_idx == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  const int64_t* ip = device_ptr<const int64_t>(index);
  visit_float(out.dtype(), [&]<typename T>() {
    if constexpr (is_half_v<T>) {
      Tensor acc = Tensor::empty(out.shape(), DType::F32, out.device());
      copy(out, acc);
      index_add_kernel<float, T><<<blocks_for(s.outer * s.inner), 256, 0, stream>>>(
          device_ptr<float>(acc), ip, device_ptr<const T>(src), s.outer, s.size, n_idx, s.inner);
      BVLLM_CUDA_CHECK_LAUNCH();
      copy(acc, out);
    } else {
      index_add_kernel<T, T><<<blocks_for(s.outer * s.inner), 256, 0, stream>>>(
          device_ptr<T>(out), ip, device_ptr<const T>(src), s.outer, s.size, n_idx, s.inner);
    }
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void gather(const Tensor& a, int dim, const Tensor& index, Tensor& out) {
  BVLLM_REQUIRE(a.is_contiguous() && index.is_contiguous() && out.is_contiguous() && index.dtype() == DType::I64,
                "cuda::gather: expected contiguous tensors and an i64 index");
  const DimSplit s = split_at(index.shape(), dim);
  const int64_t n_in = a.shape()[dim], total = index.numel();
  if (total == 0) return;
  cudaStream_t stream = current_stream(a.device().index);
  visit_size(a.dtype(), [&]<typename U>() {
    gather_kernel<U><<<blocks_for(total), 256, 0, stream>>>(device_ptr<const U>(a), device_ptr<const int64_t>(index),
                                                            device_ptr<U>(out), s.outer, n_in, s.size, s.inner);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  BVLLM_REQUIRE(cond.dtype() == DType::Bool, "cuda::where: condition must be bool, got ", dtype_name(cond.dtype()));
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  const OffsetCalc<4> calc = make_offset_calc<4>(out.shape(), {&cond, &a, &b, &out});
  visit_size(out.dtype(), [&]<typename U>() {
    where_kernel<U><<<blocks_for(n), 256, 0, stream>>>(storage_ptr<const bool>(cond), storage_ptr<const U>(a),
                                                       storage_ptr<const U>(b), storage_ptr<U>(out), calc, n);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void topk(const Tensor& a, int64_t k, Tensor& values, Tensor& indices) {
  BVLLM_REQUIRE(a.is_contiguous() && values.is_contiguous() && indices.is_contiguous(),
                "cuda::topk: expected contiguous tensors");
  const int64_t n = a.dim() ? a.size(-1) : 1, rows = n ? a.numel() / n : 0;
  BVLLM_REQUIRE(k >= 0 && k <= n, "cuda::topk: k = ", k, " but rows have ", n, " elements");
  if (rows == 0 || k == 0) return;
  const int threads = n > 1024 ? 256 : (n > 64 ? 128 : 32);
  cudaStream_t stream = current_stream(a.device().index);
  visit_dtype(a.dtype(), [&]<typename T>() {
    topk_kernel<T><<<blocks_for(rows, 1), threads, 0, stream>>>(device_ptr<const T>(a), device_ptr<T>(values),
                                                                device_ptr<int64_t>(indices), rows, n, k);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
