// Embedding lookup and its deterministic backward, and cross-entropy over rows of logits (the
// references are in runtime/cpu/nn.cc).
//
// embedding: a row copy, moved in the widest unit (up to 16 bytes) that the row size and the
// pointers allow; one thread per unit, so a warp copies a contiguous run.
//
// embedding_backward, deterministic without float atomics: the positions 0..N-1 are sorted by id
// with CUB's radix sort (stable, so equal ids keep their position order; only the bits below the
// vocabulary size are sorted, ~3 passes of 8 bits for a 152k vocabulary). Then the block for the
// first sorted position of each id, and each 256-column tile of the row, adds that id's gout rows
// in position order to the existing gweight row (the front end passes zeros) and writes it once.
// That is the CPU's order exactly, so f32 and f64 results equal the CPU's bit for bit; bf16/f16
// rows are summed in f32 and rounded once. Cost: the sort (O(N), microseconds for N ~ 1e5) plus one
// read of gout and one read-write of the touched gweight rows. An id repeated L times is summed
// serially by its column tiles (L dependent adds per column), so a batch dominated by one token
// (padding) is latency-bound at roughly L * h / (256 * tiles in flight) loads; fine for text, not
// tuned for that case.
//
// cross_entropy: one block per row, one read of the row for the online (max, sum exp), lse written
// in f32 (f64 for f64). The count of non-ignored rows is summed on the device with integer atomics
// (exact, order-free) and copied back as one int64, which synchronizes the stream.
// cross_entropy_backward: one block per row, one read of the row and one write.
#include <cub/device/device_radix_sort.cuh>

#include "runtime/cuda/block_reduce.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/kernels.h"

namespace bvllm::cuda {

namespace {

// --- embedding ----------------------------------------------------------------------------------

template <typename U>
__global__ void embedding_kernel(const U* weight, const int64_t* ids, U* out, int64_t n, int64_t units_per_row) {
  BVLLM_GRID_STRIDE_LOOP(e, n * units_per_row) {
    const int64_t row = e / units_per_row, u = e - row * units_per_row;
    out[e] = weight[ids[row] * units_per_row + u];
  }
}

// Calls f.template operator()<U>() with U the widest unsigned unit of at most 16 bytes that
// divides `row_bytes` and to which both pointers are aligned.
template <typename F>
void by_copy_unit(size_t row_bytes, const void* a, const void* b, F&& f) {
  const auto fits = [&](size_t unit) {
    return row_bytes % unit == 0 && reinterpret_cast<uintptr_t>(a) % unit == 0 &&
           reinterpret_cast<uintptr_t>(b) % unit == 0;
  };
  if (fits(16)) return f.template operator()<uint4>();
  if (fits(8)) return f.template operator()<uint2>();
  if (fits(4)) return f.template operator()<uint32_t>();
  if (fits(2)) return f.template operator()<uint16_t>();
  return f.template operator()<uint8_t>();
}

__global__ void iota_kernel(int32_t* out, int64_t n) { BVLLM_GRID_STRIDE_LOOP(i, n) out[i] = static_cast<int32_t>(i); }

// Block (s, tile): if sorted position s starts a run of equal ids, adds gout's rows of that run, in
// position order, to gweight[id] over the tile's columns.
template <typename T>
__global__ void embedding_backward_kernel(const uint64_t* sorted_ids, const int32_t* positions, const T* gout,
                                          int64_t n, int64_t h, T* gweight) {
  using A = acc_t<T>;
  const int64_t s = blockIdx.x;
  const int64_t col = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const uint64_t id = sorted_ids[s];
  if (col >= h || (s > 0 && sorted_ids[s - 1] == id)) return;
  int64_t end = s + 1;
  while (end < n && sorted_ids[end] == id) ++end;
  T* dst = gweight + static_cast<int64_t>(id) * h + col;
  A acc = load(dst);
#pragma unroll 4
  for (int64_t k = s; k < end; ++k) acc += load(gout + positions[k] * h + col);
  store(dst, acc);
}

// --- cross-entropy ------------------------------------------------------------------------------

template <typename T>
__global__ void cross_entropy_kernel(const T* logits, const int64_t* targets, int64_t ignore_index, int64_t c,
                                     acc_t<T>* loss, acc_t<T>* lse, unsigned long long* counted) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* row = logits + r * c;
  MaxSum<A> ms{-static_cast<A>(INFINITY), A(0)};
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) max_sum_add(ms, load(row + i));
  ms = block_reduce(ms, MaxSumOp{}, MaxSum<A>{-static_cast<A>(INFINITY), A(0)});
  if (threadIdx.x != 0) return;
  // The CPU's two passes give NaN where the max is infinite (exp(inf - inf), or -inf - -inf).
  const A s = isinf(ms.max) ? static_cast<A>(NAN) : ms.max + acc_log(ms.sum);
  const int64_t t = targets[r];
  lse[r] = s;
  if (t == ignore_index) {
    loss[r] = 0;
  } else {
    loss[r] = s - load(row + t);
    atomicAdd(counted, 1ull);
  }
}

// d loss_r / d x_ri = (softmax_ri - [i == target_r]) * scale; ignored rows get zeros.
template <typename T>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* targets, int64_t ignore_index,
                                              const acc_t<T>* lse, double scale, int64_t c, T* glogits) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* row = logits + r * c;
  T* g = glogits + r * c;
  const int64_t t = targets[r];
  if (t == ignore_index) {
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) store(g + i, A(0));
    return;
  }
  const A s = static_cast<A>(scale), l = lse[r];
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    A v = acc_exp(load(row + i) - l) * s;
    if (i == t) v -= s;
    store(g + i, v);
  }
}

}  // namespace

void embedding(const Tensor& weight, const Tensor& ids, Tensor& out) {
  const int64_t n = ids.numel();
  const size_t row_bytes = static_cast<size_t>(weight.size(1)) * dtype_size(weight.dtype());
  if (n == 0 || row_bytes == 0) return;
  cudaStream_t stream = current_stream(weight.device().index);
  by_copy_unit(row_bytes, weight.raw_data(), out.raw_data(), [&]<typename U>() {
    const int64_t units = static_cast<int64_t>(row_bytes / sizeof(U));
    embedding_kernel<U><<<blocks_for(n * units), 256, 0, stream>>>(device_ptr<U>(weight), device_ptr<int64_t>(ids),
                                                                   device_ptr<U>(out), n, units);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void embedding_backward(const Tensor& ids, const Tensor& gout, Tensor& gweight) {
  const int64_t n = ids.numel(), vocab = gweight.size(0), h = gweight.size(1);
  if (n == 0 || h == 0) return;
  BVLLM_REQUIRE(n <= INT32_MAX, "cuda::embedding_backward: ", n, " ids (at most 2^31 - 1 are supported)");
  const Device device = gweight.device();
  cudaStream_t stream = current_stream(device.index);
  int end_bit = 1;  // sort only the bits ids can use (ids are in [0, vocab), checked by the front end)
  while (end_bit < 64 && (uint64_t{1} << end_bit) < static_cast<uint64_t>(vocab)) ++end_bit;

  Tensor sorted_ids = Tensor::empty({n}, DType::I64, device);
  Tensor positions = Tensor::empty({n}, DType::I32, device);
  Tensor sorted_positions = Tensor::empty({n}, DType::I32, device);
  iota_kernel<<<blocks_for(n), 256, 0, stream>>>(device_ptr<int32_t>(positions), n);
  BVLLM_CUDA_CHECK_LAUNCH();
  const auto* keys_in = device_ptr<uint64_t>(ids);  // non-negative, so unsigned order is id order
  auto* keys_out = device_ptr<uint64_t>(sorted_ids);
  size_t temp_bytes = 0;
  BVLLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out,
                                                   device_ptr<int32_t>(positions),
                                                   device_ptr<int32_t>(sorted_positions), n, 0, end_bit, stream));
  Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes)}, DType::U8, device);
  BVLLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys_in, keys_out,
                                                   device_ptr<int32_t>(positions),
                                                   device_ptr<int32_t>(sorted_positions), n, 0, end_bit, stream));

  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>((h + kThreads - 1) / kThreads));
  visit_float(gweight.dtype(), [&]<typename T>() {
    embedding_backward_kernel<T><<<grid, kThreads, 0, stream>>>(keys_out, device_ptr<int32_t>(sorted_positions),
                                                                device_ptr<T>(gout), n, h, device_ptr<T>(gweight));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

int64_t cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse) {
  const int64_t rows = logits.size(0), c = logits.size(1);
  if (rows == 0) return 0;
  const Device device = logits.device();
  cudaStream_t stream = current_stream(device.index);
  Tensor counted = Tensor::empty({1}, DType::I64, device);
  BVLLM_CUDA_CHECK(cudaMemsetAsync(counted.raw_data(), 0, sizeof(int64_t), stream));
  visit_float(logits.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    cross_entropy_kernel<T><<<static_cast<unsigned>(rows), row_threads(c, 1024), 0, stream>>>(
        device_ptr<T>(logits), device_ptr<int64_t>(targets), ignore_index, c, device_ptr<A>(loss), device_ptr<A>(lse),
        device_ptr<unsigned long long>(counted));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
  int64_t host = 0;
  BVLLM_CUDA_CHECK(cudaMemcpyAsync(&host, counted.raw_data(), sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& lse,
                            double scale, Tensor& glogits) {
  const int64_t rows = logits.size(0), c = logits.size(1);
  if (rows == 0 || c == 0) return;
  cudaStream_t stream = current_stream(logits.device().index);
  visit_float(logits.dtype(), [&]<typename T>() {
    using A = acc_t<T>;
    cross_entropy_backward_kernel<T><<<static_cast<unsigned>(rows), row_threads(c, 1024), 0, stream>>>(
        device_ptr<T>(logits), device_ptr<int64_t>(targets), ignore_index, device_ptr<A>(lse), scale, c,
        device_ptr<T>(glogits));
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
