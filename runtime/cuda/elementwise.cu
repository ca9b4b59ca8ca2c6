// Elementwise math on the GPU (runtime/cpu/elementwise.cc is the reference): one thread per
// element, f32 arithmetic for bf16/f16 (and f32), f64 for f64, the CPU's formulas term for term.
// Results match the CPU to the last few ulps of the math library (CUDA's expf, tanhf, erff are
// within 2 ulp, not correctly rounded), not bit for bit.
#include "runtime/cuda/kernels.h"
#include "runtime/cuda/loops.cuh"

namespace bvllm::cuda {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;  // 1/sqrt(2 pi)

// Math on the accumulation type: the f32 functions for float, the f64 ones for double.
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dpow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double dpow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }
__device__ __forceinline__ float derf(float x) { return erff(x); }
__device__ __forceinline__ double derf(double x) { return erf(x); }
__device__ __forceinline__ float dabs(float x) { return fabsf(x); }
__device__ __forceinline__ double dabs(double x) { return fabs(x); }

template <typename A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + dexp(-x));
}

// y = f(x) with scalar s (Pow's exponent, the *Scalar ops' operand).
template <UnaryOp Op, typename A>
__device__ __forceinline__ A unary_fn(A v, A s) {
  if constexpr (Op == UnaryOp::Neg) return -v;
  if constexpr (Op == UnaryOp::Exp) return dexp(v);
  if constexpr (Op == UnaryOp::Log) return dlog(v);
  if constexpr (Op == UnaryOp::Sqrt) return dsqrt(v);
  if constexpr (Op == UnaryOp::Rsqrt) return A(1) / dsqrt(v);  // not rsqrtf: that one is approximate
  if constexpr (Op == UnaryOp::Pow) return dpow(v, s);
  if constexpr (Op == UnaryOp::Tanh) return dtanh(v);
  if constexpr (Op == UnaryOp::Sigmoid) return sigmoid(v);
  if constexpr (Op == UnaryOp::Silu) return v * sigmoid(v);
  if constexpr (Op == UnaryOp::Gelu) return A(0.5) * v * (A(1) + derf(v * A(kInvSqrt2)));
  if constexpr (Op == UnaryOp::GeluTanh)
    return A(0.5) * v * (A(1) + dtanh(A(kSqrt2OverPi) * (v + A(0.044715) * v * v * v)));
  if constexpr (Op == UnaryOp::Relu) return v > A(0) ? v : A(0);
  if constexpr (Op == UnaryOp::Abs) return dabs(v);
  if constexpr (Op == UnaryOp::AddScalar) return v + s;
  if constexpr (Op == UnaryOp::MulScalar) return v * s;
  if constexpr (Op == UnaryOp::RsubScalar) return s - v;
}

// Which saved tensor the backward of Op reads: the output y for exp, sqrt, rsqrt, tanh and
// sigmoid, the input x for the rest that need one (runtime/ops/elementwise.cc saves accordingly).
enum class Saved { None, X, Y };
template <UnaryOp Op>
constexpr Saved saved_for() {
  switch (Op) {
    case UnaryOp::Neg:
    case UnaryOp::RsubScalar:
    case UnaryOp::AddScalar:
    case UnaryOp::MulScalar: return Saved::None;
    case UnaryOp::Exp:
    case UnaryOp::Sqrt:
    case UnaryOp::Rsqrt:
    case UnaryOp::Tanh:
    case UnaryOp::Sigmoid: return Saved::Y;
    default: return Saved::X;
  }
}

// gx = d * f'(.) where v is x or y as saved_for<Op> says.
template <UnaryOp Op, typename A>
__device__ __forceinline__ A unary_grad(A v, A d, A s) {
  if constexpr (Op == UnaryOp::Neg || Op == UnaryOp::RsubScalar) return -d;
  if constexpr (Op == UnaryOp::AddScalar) return d;
  if constexpr (Op == UnaryOp::MulScalar) return d * s;
  if constexpr (Op == UnaryOp::Exp) return d * v;
  if constexpr (Op == UnaryOp::Log) return d / v;
  if constexpr (Op == UnaryOp::Sqrt) return d / (A(2) * v);
  if constexpr (Op == UnaryOp::Rsqrt) return A(-0.5) * d * v * v * v;
  if constexpr (Op == UnaryOp::Pow) return d * s * dpow(v, s - A(1));
  if constexpr (Op == UnaryOp::Tanh) return d * (A(1) - v * v);
  if constexpr (Op == UnaryOp::Sigmoid) return d * v * (A(1) - v);
  if constexpr (Op == UnaryOp::Silu) {
    A sg = sigmoid(v);
    return d * sg * (A(1) + v * (A(1) - sg));
  }
  if constexpr (Op == UnaryOp::Gelu) {
    A cdf = A(0.5) * (A(1) + derf(v * A(kInvSqrt2)));
    A pdf = A(kInvSqrt2Pi) * dexp(A(-0.5) * v * v);
    return d * (cdf + v * pdf);
  }
  if constexpr (Op == UnaryOp::GeluTanh) {
    A inner = A(kSqrt2OverPi) * (v + A(0.044715) * v * v * v);
    A t = dtanh(inner);
    A dinner = A(kSqrt2OverPi) * (A(1) + A(3 * 0.044715) * v * v);
    return d * (A(0.5) * (A(1) + t) + A(0.5) * v * (A(1) - t * t) * dinner);
  }
  if constexpr (Op == UnaryOp::Relu) return v > A(0) ? d : A(0);
  if constexpr (Op == UnaryOp::Abs) return v > A(0) ? d : (v < A(0) ? -d : A(0));
}

template <typename F>
void visit_unary(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Neg: return f.template operator()<UnaryOp::Neg>();
    case UnaryOp::Exp: return f.template operator()<UnaryOp::Exp>();
    case UnaryOp::Log: return f.template operator()<UnaryOp::Log>();
    case UnaryOp::Sqrt: return f.template operator()<UnaryOp::Sqrt>();
    case UnaryOp::Rsqrt: return f.template operator()<UnaryOp::Rsqrt>();
    case UnaryOp::Pow: return f.template operator()<UnaryOp::Pow>();
    case UnaryOp::Tanh: return f.template operator()<UnaryOp::Tanh>();
    case UnaryOp::Sigmoid: return f.template operator()<UnaryOp::Sigmoid>();
    case UnaryOp::Silu: return f.template operator()<UnaryOp::Silu>();
    case UnaryOp::Gelu: return f.template operator()<UnaryOp::Gelu>();
    case UnaryOp::GeluTanh: return f.template operator()<UnaryOp::GeluTanh>();
    case UnaryOp::Relu: return f.template operator()<UnaryOp::Relu>();
    case UnaryOp::Abs: return f.template operator()<UnaryOp::Abs>();
    case UnaryOp::AddScalar: return f.template operator()<UnaryOp::AddScalar>();
    case UnaryOp::MulScalar: return f.template operator()<UnaryOp::MulScalar>();
    case UnaryOp::RsubScalar: return f.template operator()<UnaryOp::RsubScalar>();
  }
}

template <typename T, UnaryOp Op>
__global__ void unary_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, acc_t<T> s) {
  BVLLM_GRID_STRIDE_LOOP(i, n) store(y + i, unary_fn<Op>(load(x + i), s));
}

// v is x or y (or null when the derivative needs neither).
template <typename T, UnaryOp Op>
__global__ void unary_backward_kernel(const T* __restrict__ v, const T* __restrict__ gy, T* __restrict__ gx, int64_t n,
                                      acc_t<T> s) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    const acc_t<T> saved = v ? load(v + i) : acc_t<T>(0);
    store(gx + i, unary_grad<Op>(saved, load(gy + i), s));
  }
}

template <BinaryOp Op, typename A>
__device__ __forceinline__ A binary_fn(A x, A y) {
  if constexpr (Op == BinaryOp::Add) return x + y;
  if constexpr (Op == BinaryOp::Sub) return x - y;
  if constexpr (Op == BinaryOp::Mul) return x * y;
  if constexpr (Op == BinaryOp::Div) return x / y;
}

template <typename F>
void visit_binary(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::Add: return f.template operator()<BinaryOp::Add>();
    case BinaryOp::Sub: return f.template operator()<BinaryOp::Sub>();
    case BinaryOp::Mul: return f.template operator()<BinaryOp::Mul>();
    case BinaryOp::Div: return f.template operator()<BinaryOp::Div>();
  }
}

template <typename T, BinaryOp Op>
__global__ void binary_dense_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) store(out + i, binary_fn<Op>(load(a + i), load(b + i)));
}

// Storage base pointers; calc holds the offsets (a broadcast operand has stride 0).
template <typename T, BinaryOp Op>
__global__ void binary_kernel(const T* a, const T* b, T* out, OffsetCalc<3> calc, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    int64_t off[3];
    calc.offsets(i, off);
    store(out + off[2], binary_fn<Op>(load(a + off[0]), load(b + off[1])));
  }
}

// Compared in f64 as the CPU does (exact for every dtype but i64 beyond 2^53, as there).
template <typename T>
__global__ void compare_kernel(CompareOp op, const T* a, const T* b, bool* out, OffsetCalc<3> calc, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    int64_t off[3];
    calc.offsets(i, off);
    const double x = convert<double>(a[off[0]]), y = convert<double>(b[off[1]]);
    out[off[2]] = op == CompareOp::Eq ? x == y : (op == CompareOp::Gt ? x > y : x < y);
  }
}

// SwiGLU as runtime/cpu/elementwise.cc computes it: out = g * sigmoid(g) * u; with s = sigmoid(g),
// ggate = d * u * s * (1 + g * (1 - s)) and gup = d * (g * s).
template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, int64_t n) {
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    const acc_t<T> g = load(gate + i);
    store(out + i, g * sigmoid(g) * load(up + i));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ gout,
                                       T* __restrict__ ggate, T* __restrict__ gup, int64_t n) {
  using A = acc_t<T>;
  BVLLM_GRID_STRIDE_LOOP(i, n) {
    const A g = load(gate + i), u = load(up + i), d = load(gout + i);
    const A s = sigmoid(g);
    store(ggate + i, d * u * s * (A(1) + g * (A(1) - s)));
    store(gup + i, d * (g * s));
  }
}

}  // namespace

void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  BVLLM_REQUIRE(gate.is_contiguous() && up.is_contiguous() && out.is_contiguous() && gate.shape() == up.shape() &&
                    gate.shape() == out.shape(),
                "cuda::swiglu: expected contiguous tensors of one shape, got ", shape_str(gate.shape()), ", ",
                shape_str(up.shape()), ", ", shape_str(out.shape()));
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  visit_float(out.dtype(), [&]<typename T>() {
    swiglu_kernel<T>
        <<<blocks_for(n), 256, 0, stream>>>(device_ptr<const T>(gate), device_ptr<const T>(up), device_ptr<T>(out), n);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& gout, Tensor& ggate, Tensor& gup) {
  const Shape& shape = gout.shape();
  BVLLM_REQUIRE(gate.is_contiguous() && up.is_contiguous() && gout.is_contiguous() && ggate.is_contiguous() &&
                    gup.is_contiguous() && gate.shape() == shape && up.shape() == shape && ggate.shape() == shape &&
                    gup.shape() == shape,
                "cuda::swiglu_backward: expected contiguous tensors of one shape, got gate ", shape_str(gate.shape()),
                ", gout ", shape_str(shape));
  const int64_t n = gout.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(gout.device().index);
  visit_float(gout.dtype(), [&]<typename T>() {
    swiglu_backward_kernel<T><<<blocks_for(n), 256, 0, stream>>>(device_ptr<const T>(gate), device_ptr<const T>(up),
                                                                 device_ptr<const T>(gout), device_ptr<T>(ggate),
                                                                 device_ptr<T>(gup), n);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void unary(UnaryOp op, double scalar, const Tensor& x, Tensor& y) {
  BVLLM_REQUIRE(x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel(),
                "cuda::unary: expected contiguous tensors of equal size");
  const int64_t n = x.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(x.device().index);
  visit_float(x.dtype(), [&]<typename T>() {
    visit_unary(op, [&]<UnaryOp Op>() {
      unary_kernel<T, Op><<<blocks_for(n), 256, 0, stream>>>(device_ptr<const T>(x), device_ptr<T>(y), n,
                                                             static_cast<acc_t<T>>(scalar));
    });
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void unary_backward(UnaryOp op, double scalar, const Tensor& x, const Tensor& y, const Tensor& gy, Tensor& gx) {
  const int64_t n = gy.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(gy.device().index);
  visit_float(gy.dtype(), [&]<typename T>() {
    visit_unary(op, [&]<UnaryOp Op>() {
      constexpr Saved which = saved_for<Op>();
      const Tensor* saved = which == Saved::X ? &x : which == Saved::Y ? &y : nullptr;
      BVLLM_REQUIRE(!saved || (saved->defined() && saved->is_contiguous() && saved->numel() == n),
                    "cuda::unary_backward: the saved ", which == Saved::X ? "input" : "output",
                    " is missing or not contiguous");
      unary_backward_kernel<T, Op><<<blocks_for(n), 256, 0, stream>>>(saved ? device_ptr<const T>(*saved) : nullptr,
                                                                      device_ptr<const T>(gy), device_ptr<T>(gx), n,
                                                                      static_cast<acc_t<T>>(scalar));
    });
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  const OffsetCalc<3> calc = make_offset_calc<3>(out.shape(), {&a, &b, &out});
  visit_float(out.dtype(), [&]<typename T>() {
    visit_binary(op, [&]<BinaryOp Op>() {
      if (calc.linear()) {
        binary_dense_kernel<T, Op><<<blocks_for(n), 256, 0, stream>>>(storage_ptr<const T>(a) + calc.base[0],
                                                                      storage_ptr<const T>(b) + calc.base[1],
                                                                      storage_ptr<T>(out) + calc.base[2], n);
      } else {
        binary_kernel<T, Op><<<blocks_for(n), 256, 0, stream>>>(storage_ptr<const T>(a), storage_ptr<const T>(b),
                                                                storage_ptr<T>(out), calc, n);
      }
    });
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

void compare(CompareOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  BVLLM_REQUIRE(out.dtype() == DType::Bool, "cuda::compare: output must be bool, got ", dtype_name(out.dtype()));
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream(out.device().index);
  const OffsetCalc<3> calc = make_offset_calc<3>(out.shape(), {&a, &b, &out});
  visit_dtype(a.dtype(), [&]<typename T>() {
    compare_kernel<T><<<blocks_for(n), 256, 0, stream>>>(op, storage_ptr<const T>(a), storage_ptr<const T>(b),
                                                         storage_ptr<bool>(out), calc, n);
  });
  BVLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace bvllm::cuda
