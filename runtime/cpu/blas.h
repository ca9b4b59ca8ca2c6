// Typed row-major GEMM over OpenBLAS: C = alpha * op(A) @ op(B) + beta * C.
//
// A product with one row (or one column) goes to GEMV: OpenBLAS 0.3.21's GEMM packs both operands
// first, which for x[1, k] @ W^T reads the whole weight twice (pack, then multiply); decoding one
// token at a time is nothing but such products (bvllm_bench qwen2_decode_cpu, docs/benchmarks.md).
#pragma once

#include <cblas.h>

#include <cstdint>

namespace bvllm::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc);

template <>
inline void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                        const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 1 && n > 1 && k > 0) {
    // c[n] = op(B)^T a: B is [k, n] (Trans) or, transposed, [n, k] (NoTrans); a is a row, or a column of lda.
    cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? n : k, tb ? k : n, alpha, b, ldb, a, ta ? lda : 1,
                beta, c, 1);
    return;
  }
  if (n == 1 && m > 1 && k > 0) {
    // c[m] (stride ldc) = op(A) b: A is [m, k] (NoTrans) or, transposed, [k, m] (Trans); b is a column of ldb or a row.
    cblas_sgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, ta ? k : m, ta ? m : k, alpha, a, lda, b, tb ? 1 : ldb,
                beta, c, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b,
              ldb, beta, c, ldc);
}

template <>
inline void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                         const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b,
              ldb, beta, c, ldc);
}

}  // namespace bvllm::cpu
