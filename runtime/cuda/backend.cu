// Device memory, copies, fill and strided copy on the GPU.
// TODO(issue 3): the caching allocator replaces cudaMalloc/cudaFree here.
#include <cstdint>

#include "runtime/cuda/backend.h"
#include "runtime/cuda/check.h"
#include "runtime/tensor.h"

namespace bvllm::cuda {

namespace {

constexpr int kMaxRank = 8;
struct Strided {
  int rank;
  int64_t shape[kMaxRank];
  int64_t strides[kMaxRank];
  int64_t offset;
};

Strided describe(const Tensor& t) {
  BVLLM_REQUIRE(t.dim() <= kMaxRank, "cuda: tensors of rank > ", kMaxRank, " are not supported");
  Strided s{static_cast<int>(t.dim()), {}, {}, t.offset()};
  for (int i = 0; i < s.rank; ++i) {
    s.shape[i] = t.shape()[i];
    s.strides[i] = t.strides()[i];
  }
  return s;
}

__device__ int64_t element_offset(const Strided& s, int64_t flat) {
  int64_t off = s.offset;
  for (int d = s.rank - 1; d >= 0; --d) {
    off += (flat % s.shape[d]) * s.strides[d];
    flat /= s.shape[d];
  }
  return off;
}

template <typename T>
__global__ void fill_kernel(T* base, Strided s, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    base[element_offset(s, i)] = value;
}

template <typename T>
__global__ void copy_kernel(const T* src, Strided ss, T* dst, Strided ds, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[element_offset(ds, i)] = src[element_offset(ss, i)];
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + 255) / 256, 65535)); }

// Same-size element types move as raw bits: dtype conversion on the GPU arrives with issue 3.
template <typename F>
void by_size(size_t size, F&& f) {
  switch (size) {
    case 1: return f.template operator()<uint8_t>();
    case 2: return f.template operator()<uint16_t>();
    case 4: return f.template operator()<uint32_t>();
    case 8: return f.template operator()<uint64_t>();
  }
}

}  // namespace

bool available() { return device_count() > 0; }

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

void* device_malloc(size_t nbytes, int device) {
  void* p = nullptr;
  BVLLM_CUDA_CHECK(cudaSetDevice(device));
  if (nbytes) BVLLM_CUDA_CHECK(cudaMalloc(&p, nbytes));
  return p;
}

void device_free(void* p, int device) {
  if (!p) return;
  cudaSetDevice(device);
  cudaFree(p);  // no throw from a deleter
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  BVLLM_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
}

void fill(Tensor& t, double value) {
  int64_t n = t.numel();
  if (n == 0) return;
  BVLLM_REQUIRE(t.dtype() == DType::F32, "cuda::fill: only f32 until issue 3 lands, got ", dtype_name(t.dtype()));
  fill_kernel<float>
      <<<blocks_for(n), 256>>>(static_cast<float*>(t.storage()->data()), describe(t), n, static_cast<float>(value));
  BVLLM_CUDA_CHECK(cudaGetLastError());
}

void copy(const Tensor& src, Tensor& dst) {
  int64_t n = dst.numel();
  if (n == 0) return;
  BVLLM_REQUIRE(src.dtype() == dst.dtype(), "cuda::copy: dtype conversion on the GPU arrives with issue 3");
  by_size(dtype_size(dst.dtype()), [&]<typename T>() {
    copy_kernel<T><<<blocks_for(n), 256>>>(static_cast<const T*>(src.storage()->data()), describe(src),
                                           static_cast<T*>(dst.storage()->data()), describe(dst), n);
  });
  BVLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace bvllm::cuda
