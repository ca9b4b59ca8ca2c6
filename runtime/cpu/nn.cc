// Embedding lookup and cross-entropy over rows of logits.
#include <cmath>
#include <cstring>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void embedding(const Tensor& weight, const Tensor& ids, Tensor& out) {
  const int64_t h = weight.size(1), n = ids.numel();
  const int64_t* ip = ids.data<int64_t>();
  const size_t row_bytes = static_cast<size_t>(h) * dtype_size(weight.dtype());
  const char* wp = static_cast<const char*>(weight.raw_data());
  char* op = static_cast<char*>(out.raw_data());
#pragma omp parallel for schedule(static) if (parallel_worth(n * h))
  for (int64_t i = 0; i < n; ++i) std::memcpy(op + i * row_bytes, wp + ip[i] * row_bytes, row_bytes);
}

// Rows are summed in id order (serially per hidden slice), so the result is deterministic.
void embedding_backward(const Tensor& ids, const Tensor& gout, Tensor& gweight) {
  const int64_t h = gweight.size(1), n = ids.numel();
  const int64_t* ip = ids.data<int64_t>();
  visit_float(gweight.dtype(), [&]<typename T>() {
    const T* g = gout.data<T>();
    T* w = gweight.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      T* row = w + ip[i] * h;
      const T* src = g + i * h;
      for (int64_t j = 0; j < h; ++j) row[j] += src[j];
    }
  });
}

int64_t cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse) {
  const int64_t rows = logits.size(0), c = logits.size(1);
  const int64_t* tp = targets.data<int64_t>();
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) counted += tp[r] != ignore_index;
  visit_float(logits.dtype(), [&]<typename T>() {
    const T* xp = logits.data<T>();
    T* lp = loss.data<T>();
    T* sp = lse.data<T>();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * c * 4))
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = xp + r * c;
      T mx = row[0];
      for (int64_t i = 1; i < c; ++i) mx = std::max(mx, row[i]);
      double total = 0;
      for (int64_t i = 0; i < c; ++i) total += std::exp(row[i] - mx);
      sp[r] = mx + static_cast<T>(std::log(total));
      lp[r] = tp[r] == ignore_index ? T(0) : sp[r] - row[tp[r]];
    }
  });
  return counted;
}

// d loss_r / d x_ri = softmax_ri - [i == target_r], times `scale` (1/counted * upstream grad).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& lse,
                            double scale, Tensor& glogits) {
  const int64_t rows = logits.size(0), c = logits.size(1);
  const int64_t* tp = targets.data<int64_t>();
  visit_float(logits.dtype(), [&]<typename T>() {
    const T* xp = logits.data<T>();
    const T* sp = lse.data<T>();
    T* gp = glogits.data<T>();
    const T s = static_cast<T>(scale);
#pragma omp parallel for schedule(static) if (parallel_worth(rows * c * 4))
    for (int64_t r = 0; r < rows; ++r) {
      T* g = gp + r * c;
      if (tp[r] == ignore_index) {
        for (int64_t i = 0; i < c; ++i) g[i] = T(0);
        continue;
      }
      const T* row = xp + r * c;
      for (int64_t i = 0; i < c; ++i) g[i] = std::exp(row[i] - sp[r]) * s;
      g[tp[r]] -= s;
    }
  });
}

}  // namespace bvllm::cpu
