// Reductions over the middle dim of a contiguous [outer, n, inner] tensor, and their scatters.
#include <limits>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void sum_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& out) {
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    // Accumulate in double for f32: long sums (losses over many tokens) stay accurate.
    using Acc = double;
#pragma omp parallel for schedule(static) if (parallel_worth(outer * n * inner))
    for (int64_t o = 0; o < outer; ++o) {
      if (inner == 1) {
        Acc acc = 0;
        const T* row = xp + o * n;
        for (int64_t i = 0; i < n; ++i) acc += row[i];
        op[o] = static_cast<T>(acc);
        continue;
      }
      std::vector<Acc> acc(inner, Acc(0));
      for (int64_t i = 0; i < n; ++i) {
        const T* row = xp + (o * n + i) * inner;
        for (int64_t j = 0; j < inner; ++j) acc[j] += row[j];
      }
      for (int64_t j = 0; j < inner; ++j) op[o * inner + j] = static_cast<T>(acc[j]);
    }
  });
}

void max_dim(const Tensor& x, int64_t outer, int64_t n, int64_t inner, Tensor& values, Tensor& indices) {
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* vp = values.data<T>();
    int64_t* ip = indices.data<int64_t>();
#pragma omp parallel for schedule(static) if (parallel_worth(outer * n * inner))
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t j = 0; j < inner; ++j) {
        T best = xp[o * n * inner + j];
        int64_t arg = 0;
        for (int64_t i = 1; i < n; ++i) {
          T v = xp[(o * n + i) * inner + j];
          // NaN wins, as in torch.max; otherwise the first maximum.
          if (v > best || (v != v && best == best)) {
            best = v;
            arg = i;
          }
        }
        vp[o * inner + j] = best;
        ip[o * inner + j] = arg;
      }
    }
  });
}

void scatter_add(Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  // out[..., index[..., j, ...], ...] += src[..., j, ...] along `dim`; all contiguous.
  const auto [outer, n_idx, inner] = split_at(index.shape(), dim);
  const int64_t n_out = out.shape()[dim];
  visit_float(out.dtype(), [&]<typename T>() {
    T* op = out.data<T>();
    const T* sp = src.data<T>();
    const int64_t* ip = index.data<int64_t>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < n_idx; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          int64_t k = ip[(o * n_idx + i) * inner + j];
          op[(o * n_out + k) * inner + j] += sp[(o * n_idx + i) * inner + j];
        }
  });
}

}  // namespace bvllm::cpu
