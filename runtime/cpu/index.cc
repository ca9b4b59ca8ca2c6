// Indexing kernels on contiguous tensors viewed as [outer, n, inner] around the indexed dim.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void index_select(const Tensor& a, int dim, const Tensor& index, Tensor& out) {
  DimSplit s = split_at(a.shape(), dim);
  const int64_t n_in = a.shape()[dim], n_idx = index.numel();
  const int64_t* ip = index.data<int64_t>();
  const size_t es = dtype_size(a.dtype()), chunk = static_cast<size_t>(s.inner) * es;
  const char* src = static_cast<const char*>(a.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t i = 0; i < n_idx; ++i)
      std::memcpy(dst + (o * n_idx + i) * chunk, src + (o * n_in + ip[i]) * chunk, chunk);
}

void index_add(Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  DimSplit s = split_at(out.shape(), dim);
  const int64_t n_out = out.shape()[dim], n_idx = index.numel();
  const int64_t* ip = index.data<int64_t>();
  visit_float(out.dtype(), [&]<typename T>() {
    T* op = out.data<T>();
    const T* sp = src.data<T>();
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < n_idx; ++i)
        for (int64_t j = 0; j < s.inner; ++j)
          op[(o * n_out + ip[i]) * s.inner + j] += sp[(o * n_idx + i) * s.inner + j];
  });
}

void gather(const Tensor& a, int dim, const Tensor& index, Tensor& out) {
  DimSplit s = split_at(index.shape(), dim);
  const int64_t n_in = a.shape()[dim], n_idx = index.shape()[dim];
  const int64_t* ip = index.data<int64_t>();
  visit_dtype(a.dtype(), [&]<typename T>() {
    const T* ap = a.data<T>();
    T* op = out.data<T>();
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < n_idx; ++i)
        for (int64_t j = 0; j < s.inner; ++j) {
          const int64_t at = (o * n_idx + i) * s.inner + j;
          op[at] = ap[(o * n_in + ip[at]) * s.inner + j];
        }
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  visit_dtype(out.dtype(), [&]<typename T>() {
    const bool* cp = base<const bool>(cond);
    const T* ap = base<const T>(a);
    const T* bp = base<const T>(b);
    T* op = base<T>(out);
    for_each_row<4>(out.shape(), {&cond, &a, &b, &out}, [&](auto off, int64_t n, auto st) {
      for (int64_t i = 0; i < n; ++i)
        op[off[3] + i * st[3]] = cp[off[0] + i * st[0]] ? ap[off[1] + i * st[1]] : bp[off[2] + i * st[2]];
    });
  });
}

void topk(const Tensor& a, int64_t k, Tensor& values, Tensor& indices) {
  const int64_t n = a.size(-1), rows = n ? a.numel() / n : 0;
  visit_dtype(a.dtype(), [&]<typename T>() {
    const T* ap = a.data<T>();
    T* vp = values.data<T>();
    int64_t* ip = indices.data<int64_t>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * n * 8))
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = ap + r * n;
      std::vector<int64_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      auto greater = [&](int64_t x, int64_t y) {
        double vx = convert<double>(row[x]), vy = convert<double>(row[y]);
        return vx > vy || (vx == vy && x < y);
      };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), greater);
      for (int64_t i = 0; i < k; ++i) {
        vp[r * k + i] = row[order[i]];
        ip[r * k + i] = order[i];
      }
    }
  });
}

}  // namespace bvllm::cpu
