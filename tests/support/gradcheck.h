// Finite-difference gradient checks in f64: the test every differentiable op must pass.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm::testing {

// Checks d(sum(f(inputs) * w))/d(input) from autograd against central differences, for every
// input that requires grad, where w is a fixed random weight (so each output element matters).
// Inputs must be f64. Returns "" on success, else a description of the first mismatch.
std::string gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double eps = 1e-6, double atol = 1e-7, double rtol = 1e-5);

// A random f64 tensor (normal, seeded) that requires grad.
Tensor rand_f64(const Shape& shape, uint64_t seed, bool requires_grad = true);

// max |a - b| / max(|b|, floor) over elements: the relative error tests compare against.
double max_rel_error(const Tensor& a, const Tensor& b, double floor = 1e-6);

}  // namespace bvllm::testing
