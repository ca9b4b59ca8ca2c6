// Reference tensors that tests/reference/*.py computed with PyTorch, read from
// tests/reference/fixtures/<name>.safetensors (so the C++ tests never need PyTorch).
#pragma once

#include <string>

#include "runtime/io/safetensors.h"
#include "runtime/tensor.h"

namespace bvllm::testing {

class Fixture {
 public:
  explicit Fixture(const std::string& name);
  Tensor operator[](const std::string& key) const;  // throws naming the fixture when absent
  bool has(const std::string& key) const { return file_.has(key); }
  // Every tensor whose key starts with `prefix`, named without it, in the file's order (a
  // fixture's `param.*` entries as the checkpoint they stand for).
  NamedTensors tensors(const std::string& prefix = "") const;

 private:
  SafetensorsFile file_;
};

// max |a - b| / max |b| (relative to the reference's scale), as a double.
double rel_error(const Tensor& actual, const Tensor& expected);

}  // namespace bvllm::testing
