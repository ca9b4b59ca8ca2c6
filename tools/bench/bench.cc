#include "tools/bench/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

namespace bvllm::bench {

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> v = cpu_cases();
    v.insert(v.end(), data_cases().begin(), data_cases().end());
    v.insert(v.end(), mpi_cases().begin(), mpi_cases().end());
    v.insert(v.end(), gpu_cases().begin(), gpu_cases().end());
    return v;
  }();
  return all;
}

std::vector<double> time_ms(const Options& options, const std::function<void()>& work) {
  for (int i = 0; i < options.warmup; ++i) work();
  std::vector<double> ms;
  for (int i = 0; i < options.iters; ++i) {
    auto start = std::chrono::steady_clock::now();
    work();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return ms;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n == 0 ? 0.0 : (n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]));
}

std::string to_json(const Result& result) {
  const std::vector<double>& ms = result.ms;
  nlohmann::ordered_json j;
  j["case"] = result.name;
  j["median_ms"] = median(result.ms);
  j["min_ms"] = ms.empty() ? 0.0 : *std::min_element(ms.begin(), ms.end());
  j["iters"] = ms.size();
  j["threads"] = omp_get_max_threads();
  for (const auto& [key, value] : result.extra) j[key] = value;
  return j.dump();
}

}  // namespace bvllm::bench
