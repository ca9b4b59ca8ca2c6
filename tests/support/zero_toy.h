// A toy model for the ZeRO optimizer's tests (tests/parallel/zero_optimizer_test.cc, one process;
// tests/mpi/zero_optimizer_test.cc, many ranks): two linears and a parameter that gets a gradient
// only on some micro-batches, with inputs drawn from the micro-batch's global index, so any rank
// can compute any micro-batch, and one process can compute them all as the reference.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/zero_optimizer.h"
#include "runtime/tensor.h"

namespace bvllm::testing {

struct ZeroToy {
  Tensor w1, b1, w2, b2, unused;

  // The same values in every process (drawn from a fixed seed).
  static ZeroToy make();
  // (name, tensor) of the matrices (weight decay) and of the vectors (none).
  std::vector<std::pair<std::string, Tensor>> decay() const;
  std::vector<std::pair<std::string, Tensor>> no_decay() const;
  std::vector<Tensor> all() const;
  // The loss of global micro-batch `index`; `unused` joins it only when index % 5 == 1.
  Tensor loss(int64_t index) const;
};

// ZeroOptions with the stage, reduce mode and bucket size set.
parallel::ZeroOptions zero_options(int stage, parallel::GradReduce reduce = parallel::GradReduce::PerMicroBatch,
                                   int64_t bucket = 1 << 20);

// A training run's result: every parameter after the last step, and each step's gradient norm.
struct ZeroToyRun {
  std::vector<Tensor> params;
  std::vector<double> norms;
};

constexpr double kZeroToyLr = 0.05, kZeroToyWeightDecay = 0.1, kZeroToyClip = 0.5;

// One process, runtime AdamW (the reference): step s takes global micro-batches
// s * per_step .. s * per_step + per_step - 1, each loss divided by per_step; clip, cosine-free lr.
ZeroToyRun zero_toy_reference(int steps, int64_t per_step);

// The same under ZeroOptimizer on `dp`: rank r's micro-batch j of step s is global micro-batch
// (s * accum + j) * dp + r, so dp ranks with `accum` equal the reference with per_step = accum * dp.
ZeroToyRun zero_toy_zero(int steps, int64_t accum, parallel::Communicator& dp, const parallel::ZeroOptions& options);

}  // namespace bvllm::testing
