// bvllm_bench cases: each times one unit of work and reports one JSON line.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace bvllm::bench {

struct Options {
  int warmup = 2;
  int iters = 10;
};

struct Result {
  std::string name;
  std::vector<double> ms;               // one per timed iteration
  std::map<std::string, double> extra;  // case-specific figures (gflops, peak bytes, ...)
};

struct Case {
  std::string name;
  std::string what;  // one line for --list
  std::function<Result(const Options&)> run;
  // Instead of `run`, for a case that measures several sizes: one Result (one JSON line) each.
  std::function<std::vector<Result>(const Options&)> run_sizes = {};
  // Runs across the ranks of an mpirun job (only rank 0 prints): in the cpu and all groups only
  // under mpirun.
  bool multi_rank = false;
};

const std::vector<Case>& cases();       // all: CPU cases, data cases, MPI cases, then GPU cases
const std::vector<Case>& cpu_cases();   // tools/bench/cpu_cases.cc
const std::vector<Case>& data_cases();  // tools/bench/data_cases.cc (the data pipeline, on the CPU)
const std::vector<Case>& mpi_cases();   // tools/bench/mpi_cases.cc (across the ranks of mpirun)
const std::vector<Case>& gpu_cases();   // tools/bench/gpu_cases.cc (fail clearly without a GPU)

// Runs `work` warmup + iters times and records the timed iterations in milliseconds.
std::vector<double> time_ms(const Options& options, const std::function<void()>& work);

// The median (mean of the two middle values for an even count; 0 for none).
double median(std::vector<double> values);

// {"case":..., "median_ms":..., "min_ms":..., "iters":..., "threads":..., extra...}
std::string to_json(const Result& result);

}  // namespace bvllm::bench
