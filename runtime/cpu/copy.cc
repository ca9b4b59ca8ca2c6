// Strided copy with dtype conversion, and fill: the kernels behind copy_, contiguous, cast.
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

void fill(Tensor& t, double value) {
  visit_dtype(t.dtype(), [&]<typename T>() {
    const T v = convert<T>(value);
    T* p = base<T>(t);
    for_each_row<1>(t.shape(), {&t}, [&](auto off, int64_t n, auto st) {
      for (int64_t i = 0; i < n; ++i) p[off[0] + i * st[0]] = v;
    });
  });
}

void copy(const Tensor& src, Tensor& dst) {
  CHECK(src.shape() == dst.shape()) << shape_str(src.shape()) << " vs " << shape_str(dst.shape());
  visit_dtype(src.dtype(), [&]<typename S>() {
    visit_dtype(dst.dtype(), [&]<typename D>() {
      const S* s = base<const S>(src);
      D* d = base<D>(dst);
      for_each_row<2>(dst.shape(), {&src, &dst}, [&](auto off, int64_t n, auto st) {
        const S* sp = s + off[0];
        D* dp = d + off[1];
        if (st[0] == 1 && st[1] == 1) {
          for (int64_t i = 0; i < n; ++i) dp[i] = convert<D>(sp[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) dp[i * st[1]] = convert<D>(sp[i * st[0]]);
        }
      });
    });
  });
}

}  // namespace bvllm::cpu
