// Batched GEMM through OpenBLAS. A transposed view (column-major last two dims) is passed to BLAS
// as a transpose flag, so x @ w.transpose(0, 1) never copies w.
#include <cblas.h>

#include "runtime/cpu/blas.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

namespace {

// How BLAS should read the last two dims of a [batch, rows, cols] view.
struct Operand {
  bool transposed;
  int64_t ld;
};
Operand operand(const Tensor& t) {
  const Shape& s = t.strides();
  if (s[2] == 1 || t.shape()[2] == 1) return {false, std::max<int64_t>(s[1], std::max<int64_t>(t.shape()[2], 1))};
  CHECK(s[1] == 1 || t.shape()[1] == 1) << "gemm operand must be row- or column-major, strides " << shape_str(s);
  return {true, std::max<int64_t>(s[2], std::max<int64_t>(t.shape()[1], 1))};
}

}  // namespace

void gemm_batched(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t batch = out.shape()[0], m = out.shape()[1], n = out.shape()[2], k = a.shape()[2];
  Operand oa = operand(a), ob = operand(b);
  visit_float(out.dtype(), [&]<typename T>() {
    const T* ap = base<const T>(a) + a.offset();
    const T* bp = base<const T>(b) + b.offset();
    T* cp = out.data<T>();
    auto one = [&](int64_t i) {
      gemm<T>(oa.transposed, ob.transposed, m, n, k, T(1), ap + i * a.strides()[0], oa.ld, bp + i * b.strides()[0],
              ob.ld, T(0), cp + i * m * n, n);
    };
    // Many small products: one per thread. Few large ones: let OpenBLAS thread each.
    if (batch > 1 && m * n * k < (1 << 21)) {
#pragma omp parallel for schedule(dynamic)
      for (int64_t i = 0; i < batch; ++i) one(i);
    } else {
      for (int64_t i = 0; i < batch; ++i) one(i);
    }
  });
}

}  // namespace bvllm::cpu
