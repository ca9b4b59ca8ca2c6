#include "tests/support/fixtures.h"

#include <algorithm>
#include <cmath>

namespace bvllm::testing {

Fixture::Fixture(const std::string& name)
    : file_(SafetensorsFile::open(std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/" + name +
                                  ".safetensors")) {}

Tensor Fixture::operator[](const std::string& key) const {
  BVLLM_REQUIRE(file_.has(key), file_.path(), ": no tensor '", key, "' (regenerate with tests/reference/*.py)");
  return file_.tensor(key);
}

NamedTensors Fixture::tensors(const std::string& prefix) const {
  NamedTensors out;
  for (const std::string& key : file_.names()) {
    if (key.starts_with(prefix)) out.emplace_back(key.substr(prefix.size()), file_.tensor(key));
  }
  return out;
}

double rel_error(const Tensor& actual, const Tensor& expected) {
  BVLLM_REQUIRE(actual.shape() == expected.shape(), "rel_error: shapes ", shape_str(actual.shape()), " and ",
                shape_str(expected.shape()), " differ");
  std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  double worst = 0, scale = 1e-12;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(a[i] - e[i]));
    scale = std::max(scale, std::abs(e[i]));
  }
  return worst / scale;
}

}  // namespace bvllm::testing
