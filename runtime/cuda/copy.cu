// Fill and strided copy with dtype conversion on the GPU: the kernels behind Tensor::fill_,
// copy_, contiguous and cast (runtime/cpu/copy.cc is the reference). Conversions are
// cpu::convert's: halves through f32 with round to nearest even, bool as x != 0.
#include "runtime/cuda/backend.h"
#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"

namespace bvllm::cuda {

namespace {

template <typename T>
__global__ void fill_kernel(T* base, OffsetCalc<1> calc, int64_t n, double value) {
  const T v = convert<T>(value);
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    int64_t off[1];
    calc.offsets(i, off);
    base[off[0]] = v;
  }
}

template <typename T>
__global__ void fill_dense_kernel(T* p, int64_t n, double value) {
  const T v = convert<T>(value);
  BVLLM_GRID_STRIDE_LOOP(i, n) p[i] = v;
}

template <typename S, typename D>
__global__ void copy_kernel(const S* src, D* dst, OffsetCalc<2> calc, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    int64_t off[2];
    calc.offsets(i, off);
    dst[off[1]] = convert<D>(src[off[0]]);
  }
}

template <typename S, typename D>
__global__ void copy_dense_kernel(const S* src, D* dst, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) dst[i] = convert<D>(src[i]);
}

}  // namespace

void fill(Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(t.device().index);
  const OffsetCalc<1> calc = make_offset_calc<1>(t.shape(), {&t});
  visit_dtype(t.dtype(), [&]<typename T>() {
    T* base = storage_ptr<T>(t);
    if (calc.linear()) {
      fill_dense_kernel<T><<<blocks_for(n), 256, 0, stream>>>(base + calc.base[0], n, value);
    } else {
      fill_kernel<T><<<blocks_for(n), 256, 0, stream>>>(base, calc, n, value);
    }
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void copy(const Tensor& src, Tensor& dst) {
  BVLLM_REQUIRE(src.shape() == dst.shape(), "cuda::copy: shapes ", shape_str(src.shape()), " and ",
                shape_str(dst.shape()), " differ");
  BVLLM_REQUIRE(src.device() == dst.device(), "cuda::copy: source on ", src.device().str(), ", destination on ",
                dst.device().str());
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(dst.device().index);
  const OffsetCalc<2> calc = make_offset_calc<2>(dst.shape(), {&src, &dst});
  if (calc.linear() && src.dtype() == dst.dtype()) {
    const size_t es = dtype_size(dst.dtype());
    BVLLM_CUDA_CHECK(cudaMemcpyAsync(storage_ptr<char>(dst) + calc.base[1] * es,
                                     storage_ptr<char>(src) + calc.base[0] * es, static_cast<size_t>(n) * es,
                                     cudaMemcpyDeviceToDevice, stream));
    return;
  }
  visit_dtype(src.dtype(), [&]<typename S>() {
    visit_dtype(dst.dtype(), [&]<typename D>() {
      const S* s = storage_ptr<const S>(src);
      D* d = storage_ptr<D>(dst);
      if (calc.linear()) {
        copy_dense_kernel<S, D><<<blocks_for(n), 256, 0, stream>>>(s + calc.base[0], d + calc.base[1], n);
      } else {
        copy_kernel<S, D><<<blocks_for(n), 256, 0, stream>>>(s, d, calc, n);
      }
    });
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
