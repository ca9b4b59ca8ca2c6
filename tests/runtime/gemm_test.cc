// f32 products with one row or one column take OpenBLAS's GEMV (runtime/cpu/blas.h); every
// transpose combination must agree with the f64 product, which always takes GEMM.
#include <gtest/gtest.h>

#include "runtime/ops.h"
#include "tests/support/fixtures.h"

namespace bvllm {
namespace {

using testing::rel_error;

TEST(Gemm, SingleRowAndColumnProductsMatchF64ForEveryLayout) {
  Generator gen{21, 0, 0};
  for (auto [m, n, k] : {std::array<int64_t, 3>{1, 37, 29}, {23, 1, 31}, {1, 1, 17}, {1, 64, 1}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb);
        // Transposed operands are views of the transposed storage, as x @ w.T is.
        Tensor a = ta ? ops::normal({k, m}, gen).transpose(0, 1) : ops::normal({m, k}, gen);
        Tensor b = tb ? ops::normal({n, k}, gen).transpose(0, 1) : ops::normal({k, n}, gen);
        Tensor expected = ops::matmul(a.to(DType::F64), b.to(DType::F64));
        EXPECT_LT(rel_error(ops::matmul(a, b), expected), 1e-6);
        // Batched, and inside linear (x [1, 1, k] @ W[out, k]^T).
        EXPECT_LT(rel_error(ops::matmul(a.unsqueeze(0).expand({3, m, k}), b), expected.unsqueeze(0).expand({3, m, n})),
                  1e-6);
      }
    }
  }
  Tensor x = ops::normal({1, 1, 40}, gen), w = ops::normal({70, 40}, gen), bias = ops::normal({70}, gen);
  Tensor expected = ops::linear(x.to(DType::F64), w.to(DType::F64), bias.to(DType::F64));
  EXPECT_LT(rel_error(ops::linear(x, w, bias), expected), 1e-6);
}

}  // namespace
}  // namespace bvllm
