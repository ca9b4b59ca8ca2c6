// Elementwise math on f32/f64. Each function is written once as a scalar lambda; the loops are
// plain enough for the compiler to vectorize.
#include <glog/logging.h>

#include <cmath>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/loops.h"

namespace bvllm::cpu {

namespace {

template <typename T, typename F>
void map(const T* x, T* y, int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

template <typename T, typename F>
void map2(const T* x, const T* g, T* y, int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i], g[i]);
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;  // 1/sqrt(2 pi)

}  // namespace

void unary(UnaryOp op, double scalar, const Tensor& x, Tensor& y) {
  visit_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const int64_t n = x.numel();
    const T s = static_cast<T>(scalar);
    switch (op) {
      case UnaryOp::Neg: return map(xp, yp, n, [](T v) { return -v; });
      case UnaryOp::Exp: return map(xp, yp, n, [](T v) { return std::exp(v); });
      case UnaryOp::Log: return map(xp, yp, n, [](T v) { return std::log(v); });
      case UnaryOp::Sqrt: return map(xp, yp, n, [](T v) { return std::sqrt(v); });
      case UnaryOp::Rsqrt: return map(xp, yp, n, [](T v) { return T(1) / std::sqrt(v); });
      case UnaryOp::Pow: return map(xp, yp, n, [s](T v) { return std::pow(v, s); });
      case UnaryOp::Tanh: return map(xp, yp, n, [](T v) { return std::tanh(v); });
      case UnaryOp::Sigmoid: return map(xp, yp, n, [](T v) { return sigmoid(v); });
      case UnaryOp::Silu: return map(xp, yp, n, [](T v) { return v * sigmoid(v); });
      case UnaryOp::Gelu: return map(xp, yp, n, [](T v) { return T(0.5) * v * (T(1) + std::erf(v * T(kInvSqrt2))); });
      case UnaryOp::GeluTanh:
        return map(xp, yp, n, [](T v) {
          return T(0.5) * v * (T(1) + std::tanh(T(kSqrt2OverPi) * (v + T(0.044715) * v * v * v)));
        });
      case UnaryOp::Relu: return map(xp, yp, n, [](T v) { return v > T(0) ? v : T(0); });
      case UnaryOp::Abs: return map(xp, yp, n, [](T v) { return std::abs(v); });
      case UnaryOp::AddScalar: return map(xp, yp, n, [s](T v) { return v + s; });
      case UnaryOp::MulScalar: return map(xp, yp, n, [s](T v) { return v * s; });
      case UnaryOp::RsubScalar: return map(xp, yp, n, [s](T v) { return s - v; });
    }
  });
}

// gx = gy * f'(x). `y` is f(x) where the derivative is cheaper from it (exp, sqrt, tanh, sigmoid).
void unary_backward(UnaryOp op, double scalar, const Tensor& x, const Tensor& y, const Tensor& gy, Tensor& gx) {
  visit_float(gy.dtype(), [&]<typename T>() {
    const T* xp = x.defined() ? x.data<T>() : nullptr;
    const T* yp = y.defined() ? y.data<T>() : nullptr;
    const T* g = gy.data<T>();
    T* out = gx.data<T>();
    const int64_t n = gy.numel();
    const T s = static_cast<T>(scalar);
    switch (op) {
      case UnaryOp::Neg: return map(g, out, n, [](T d) { return -d; });
      case UnaryOp::RsubScalar: return map(g, out, n, [](T d) { return -d; });
      case UnaryOp::AddScalar: return map(g, out, n, [](T d) { return d; });
      case UnaryOp::MulScalar: return map(g, out, n, [s](T d) { return d * s; });
      case UnaryOp::Exp: return map2(yp, g, out, n, [](T v, T d) { return d * v; });
      case UnaryOp::Log: return map2(xp, g, out, n, [](T v, T d) { return d / v; });
      case UnaryOp::Sqrt: return map2(yp, g, out, n, [](T v, T d) { return d / (T(2) * v); });
      case UnaryOp::Rsqrt: return map2(yp, g, out, n, [](T v, T d) { return T(-0.5) * d * v * v * v; });
      case UnaryOp::Pow: return map2(xp, g, out, n, [s](T v, T d) { return d * s * std::pow(v, s - T(1)); });
      case UnaryOp::Tanh: return map2(yp, g, out, n, [](T v, T d) { return d * (T(1) - v * v); });
      case UnaryOp::Sigmoid: return map2(yp, g, out, n, [](T v, T d) { return d * v * (T(1) - v); });
      case UnaryOp::Silu:
        return map2(xp, g, out, n, [](T v, T d) {
          T sg = sigmoid(v);
          return d * sg * (T(1) + v * (T(1) - sg));
        });
      case UnaryOp::Gelu:
        return map2(xp, g, out, n, [](T v, T d) {
          T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
          T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
          return d * (cdf + v * pdf);
        });
      case UnaryOp::GeluTanh:
        return map2(xp, g, out, n, [](T v, T d) {
          T inner = T(kSqrt2OverPi) * (v + T(0.044715) * v * v * v);
          T t = std::tanh(inner);
          T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * 0.044715) * v * v);
          return d * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * dinner);
        });
      case UnaryOp::Relu: return map2(xp, g, out, n, [](T v, T d) { return v > T(0) ? d : T(0); });
      case UnaryOp::Abs: return map2(xp, g, out, n, [](T v, T d) { return v > T(0) ? d : (v < T(0) ? -d : T(0)); });
    }
  });
}

// out = silu(g) * u = g * sigmoid(g) * u. With s = sigmoid(g), silu'(g) = s * (1 + g * (1 - s)), so
// ggate = d * u * s * (1 + g * (1 - s)) and gup = d * (g * s): one sigmoid per element for both.
// Products are grouped as in ops::silu followed by ops::mul, so results equal that pair's bit for
// bit (as built: -std=c++20 does not contract products into FMAs).
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  CHECK(gate.is_contiguous() && up.is_contiguous() && out.is_contiguous() && gate.shape() == up.shape() &&
        gate.shape() == out.shape())
      << "swiglu wants contiguous tensors of one shape: " << shape_str(gate.shape()) << ", " << shape_str(up.shape())
      << ", " << shape_str(out.shape());
  visit_float(out.dtype(), [&]<typename T>() {
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    T* y = out.data<T>();
    const int64_t n = out.numel();
#pragma omp parallel for simd schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; ++i) y[i] = g[i] * sigmoid(g[i]) * u[i];
  });
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& gout, Tensor& ggate, Tensor& gup) {
  CHECK(gate.is_contiguous() && up.is_contiguous() && gout.is_contiguous() && ggate.is_contiguous() &&
        gup.is_contiguous() && gate.shape() == up.shape() && gate.shape() == gout.shape() &&
        gate.shape() == ggate.shape() && gate.shape() == gup.shape())
      << "swiglu_backward wants contiguous tensors of one shape: gate " << shape_str(gate.shape()) << ", gout "
      << shape_str(gout.shape());
  visit_float(gout.dtype(), [&]<typename T>() {
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    const T* d = gout.data<T>();
    T* dg = ggate.data<T>();
    T* du = gup.data<T>();
    const int64_t n = gout.numel();
#pragma omp parallel for simd schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; ++i) {
      const T s = sigmoid(g[i]);
      dg[i] = d[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
      du[i] = d[i] * (g[i] * s);
    }
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  visit_float(out.dtype(), [&]<typename T>() {
    const T* ap = base<const T>(a);
    const T* bp = base<const T>(b);
    T* op_ = base<T>(out);
    auto run = [&](auto f) {
      if (a.is_contiguous() && b.is_contiguous() && a.shape() == out.shape() && b.shape() == out.shape()) {
        const T* x = a.data<T>();
        const T* y = b.data<T>();
        T* z = out.data<T>();
        const int64_t n = out.numel();
#pragma omp parallel for simd schedule(static) if (parallel_worth(n))
        for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], y[i]);
        return;
      }
      for_each_row<3>(out.shape(), {&a, &b, &out}, [&](auto off, int64_t n, auto st) {
        const T* x = ap + off[0];
        const T* y = bp + off[1];
        T* z = op_ + off[2];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
          for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], y[i]);
        } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
          const T yv = *y;
          for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], yv);
        } else if (st[0] == 0 && st[1] == 1 && st[2] == 1) {
          const T xv = *x;
          for (int64_t i = 0; i < n; ++i) z[i] = f(xv, y[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) z[i * st[2]] = f(x[i * st[0]], y[i * st[1]]);
        }
      });
    };
    switch (op) {
      case BinaryOp::Add: return run([](T x, T y) { return x + y; });
      case BinaryOp::Sub: return run([](T x, T y) { return x - y; });
      case BinaryOp::Mul: return run([](T x, T y) { return x * y; });
      case BinaryOp::Div: return run([](T x, T y) { return x / y; });
    }
  });
}

void compare(CompareOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  visit_dtype(a.dtype(), [&]<typename T>() {
    const T* ap = base<const T>(a);
    const T* bp = base<const T>(b);
    bool* z = base<bool>(out);
    for_each_row<3>(out.shape(), {&a, &b, &out}, [&](auto off, int64_t n, auto st) {
      for (int64_t i = 0; i < n; ++i) {
        double x = convert<double>(ap[off[0] + i * st[0]]);
        double y = convert<double>(bp[off[1] + i * st[1]]);
        z[off[2] + i * st[2]] = op == CompareOp::Eq ? x == y : (op == CompareOp::Gt ? x > y : x < y);
      }
    });
  });
}

}  // namespace bvllm::cpu
