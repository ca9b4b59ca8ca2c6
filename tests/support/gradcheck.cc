#include "tests/support/gradcheck.h"

#include <cmath>
#include <sstream>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::testing {

Tensor rand_f64(const Shape& shape, uint64_t seed, bool requires_grad) {
  Generator gen{seed, 7, 0};
  Tensor t = ops::normal(shape, gen, 0.0, 1.0, DType::F64);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

double max_rel_error(const Tensor& a, const Tensor& b, double floor) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]) / std::max(std::abs(y[i]), floor));
  return worst;
}

std::string gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double eps, double atol, double rtol) {
  Tensor probe;
  {
    NoGradGuard no_grad;
    probe = f(inputs);
  }
  Tensor weight = rand_f64(probe.shape(), 1234, false);
  auto objective = [&](const std::vector<Tensor>& in) { return ops::sum(ops::mul(f(in), weight)); };

  for (Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) t.set_grad(Tensor());
  objective(inputs).backward();

  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    if (!x.grad().defined()) return "input " + std::to_string(k) + " received no gradient";
    std::vector<double> analytic = x.grad().to_vector<double>();
    Tensor xc = x.contiguous();
    double* p = static_cast<double*>(xc.raw_data());
    NoGradGuard no_grad;
    for (int64_t i = 0; i < x.numel(); ++i) {
      double saved = p[i];
      p[i] = saved + eps;
      double up = objective(inputs).item<double>();
      p[i] = saved - eps;
      double down = objective(inputs).item<double>();
      p[i] = saved;
      double numeric = (up - down) / (2 * eps);
      if (std::abs(numeric - analytic[i]) > atol + rtol * std::abs(numeric)) {
        std::ostringstream out;
        out << "input " << k << " element " << i << ": autograd " << analytic[i] << " vs finite difference " << numeric;
        return out.str();
      }
    }
  }
  return "";
}

}  // namespace bvllm::testing
