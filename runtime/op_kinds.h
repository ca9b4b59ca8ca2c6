// Names of the elementwise functions, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

namespace bvllm {

enum class UnaryOp : uint8_t {
  Neg,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Pow,
  Tanh,
  Sigmoid,
  Silu,
  Gelu,
  GeluTanh,
  Relu,
  Abs,
  AddScalar,
  MulScalar,
  RsubScalar,
};
enum class BinaryOp : uint8_t { Add, Sub, Mul, Div };
enum class CompareOp : uint8_t { Eq, Gt, Lt };

}  // namespace bvllm
