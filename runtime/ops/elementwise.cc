// Elementwise ops: broadcasting binary arithmetic, unary functions, comparisons.
#include "runtime/ops/common.h"

namespace bvllm::ops {

namespace {

Tensor unary_op(UnaryOp op, const char* name, const Tensor& a, double scalar = 0.0) {
  detail::check_floating(a, name);
  if (detail::widen_on_cpu(a)) return unary_op(op, name, a.to(DType::F32), scalar).to(a.dtype());
  Tensor x = a.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  BVLLM_KERNEL(x.device(), unary, op, scalar, x, y);
  // Derivatives of exp, sqrt, rsqrt, tanh and sigmoid come cheapest from the output.
  bool from_output = op == UnaryOp::Exp || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::Tanh ||
                     op == UnaryOp::Sigmoid;
  Tensor saved = from_output ? y.detach() : x.detach();
  record(name, {a}, y, [op, scalar, saved, from_output](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
    BVLLM_KERNEL(g.device(), unary_backward, op, scalar, from_output ? Tensor() : saved, from_output ? saved : Tensor(),
                 g, gx);
    return std::vector<Tensor>{gx};
  });
  return y;
}

Tensor binary_op(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  detail::check_same_dtype_device(a, b, name);
  detail::check_floating(a, name);
  if (detail::widen_on_cpu(a)) return binary_op(op, name, a.to(DType::F32), b.to(DType::F32)).to(a.dtype());
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  BVLLM_KERNEL(a.device(), binary, op, a.detach().expand(shape), b.detach().expand(shape), out);
  Tensor sa = a.detach(), sb = b.detach();
  record(name, {a, b}, out, [op, sa, sb](const GradContext& ctx) {
    const Tensor& g = ctx.grad();
    Tensor ga, gb;
    switch (op) {
      case BinaryOp::Add:
        if (ctx.needs(0)) ga = sum_to(g, sa.shape());
        if (ctx.needs(1)) gb = sum_to(g, sb.shape());
        break;
      case BinaryOp::Sub:
        if (ctx.needs(0)) ga = sum_to(g, sa.shape());
        if (ctx.needs(1)) gb = sum_to(neg(g), sb.shape());
        break;
      case BinaryOp::Mul:
        if (ctx.needs(0)) ga = sum_to(mul(g, sb), sa.shape());
        if (ctx.needs(1)) gb = sum_to(mul(g, sa), sb.shape());
        break;
      case BinaryOp::Div:
        if (ctx.needs(0)) ga = sum_to(div(g, sb), sa.shape());
        if (ctx.needs(1)) gb = sum_to(neg(div(mul(g, sa), mul(sb, sb))), sb.shape());
        break;
    }
    return std::vector<Tensor>{ga, gb};
  });
  return out;
}

Tensor compare_op(CompareOp op, const char* name, const Tensor& a, const Tensor& b) {
  detail::check_same_dtype_device(a, b, name);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, DType::Bool, a.device());
  BVLLM_KERNEL(a.device(), compare, op, a.detach().expand(shape), b.detach().expand(shape), out);
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary_op(BinaryOp::Add, "add", a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_op(BinaryOp::Sub, "sub", a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op(BinaryOp::Mul, "mul", a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_op(BinaryOp::Div, "div", a, b); }
Tensor add(const Tensor& a, double s) { return unary_op(UnaryOp::AddScalar, "add_scalar", a, s); }
Tensor mul(const Tensor& a, double s) { return unary_op(UnaryOp::MulScalar, "mul_scalar", a, s); }
Tensor rsub(double s, const Tensor& a) { return unary_op(UnaryOp::RsubScalar, "rsub_scalar", a, s); }
Tensor neg(const Tensor& a) { return unary_op(UnaryOp::Neg, "neg", a); }
Tensor exp(const Tensor& a) { return unary_op(UnaryOp::Exp, "exp", a); }
Tensor log(const Tensor& a) { return unary_op(UnaryOp::Log, "log", a); }
Tensor sqrt(const Tensor& a) { return unary_op(UnaryOp::Sqrt, "sqrt", a); }
Tensor rsqrt(const Tensor& a) { return unary_op(UnaryOp::Rsqrt, "rsqrt", a); }
Tensor pow(const Tensor& a, double e) { return unary_op(UnaryOp::Pow, "pow", a, e); }
Tensor tanh(const Tensor& a) { return unary_op(UnaryOp::Tanh, "tanh", a); }
Tensor sigmoid(const Tensor& a) { return unary_op(UnaryOp::Sigmoid, "sigmoid", a); }
Tensor silu(const Tensor& a) { return unary_op(UnaryOp::Silu, "silu", a); }

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  detail::check_same_dtype_device(gate, up, "swiglu");
  detail::check_floating(gate, "swiglu");
  BVLLM_REQUIRE(gate.shape() == up.shape(), "swiglu: gate ", shape_str(gate.shape()), " and up ", shape_str(up.shape()),
                " must have the same shape (no broadcasting)");
  if (detail::widen_on_cpu(gate)) return swiglu(gate.to(DType::F32), up.to(DType::F32)).to(gate.dtype());
  // Detached first: the node below records gate and up themselves, so no copy node is needed.
  Tensor g = gate.detach().contiguous(), u = up.detach().contiguous();
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  BVLLM_KERNEL(g.device(), swiglu, g, u, out);
  record("swiglu", {gate, up}, out, [g, u](const GradContext& ctx) {
    Tensor d = ctx.grad().contiguous();
    // Both gradients come from one read of gate, up and d; one alone would read the same three.
    Tensor dg = Tensor::empty(d.shape(), d.dtype(), d.device());
    Tensor du = Tensor::empty(d.shape(), d.dtype(), d.device());
    BVLLM_KERNEL(d.device(), swiglu_backward, g, u, d, dg, du);
    return std::vector<Tensor>{ctx.needs(0) ? dg : Tensor(), ctx.needs(1) ? du : Tensor()};
  });
  return out;
}

Tensor gelu(const Tensor& a, GeluApprox approx) {
  return approx == GeluApprox::Tanh ? unary_op(UnaryOp::GeluTanh, "gelu_tanh", a) : unary_op(UnaryOp::Gelu, "gelu", a);
}
Tensor relu(const Tensor& a) { return unary_op(UnaryOp::Relu, "relu", a); }
Tensor abs(const Tensor& a) { return unary_op(UnaryOp::Abs, "abs", a); }

Tensor eq(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Eq, "eq", a, b); }
Tensor gt(const Tensor& a, double s) { return compare_op(CompareOp::Gt, "gt", a, full({}, s, a.dtype(), a.device())); }
Tensor lt(const Tensor& a, double s) { return compare_op(CompareOp::Lt, "lt", a, full({}, s, a.dtype(), a.device())); }

}  // namespace bvllm::ops
