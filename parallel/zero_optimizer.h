// Data parallelism and ZeRO: AdamW over data-parallel replicas, with the optimizer state (stage 1)
// and the gradients (stage 2) partitioned over the dp ranks (../shared/DESIGN.md parallel/,
// research/distributed.md §2.5-§2.7). Stage 0 (plain data parallelism) and stage 1 are the same
// code with less partitioning.
//
// Layout. The trainable parameters of each group (weight decay on / off) are laid end to end in
// reverse order (the order backward produces their gradients) and cut into buckets of about
// bucket_elements, each padded to a multiple of dp. Rank r owns elements [r L/dp, (r+1) L/dp) of
// every bucket of length L (Megatron's distributed optimizer: "1/dp of every bucket"); a parameter
// may straddle two owners.
//
// Gradients. A grad-ready hook on every parameter takes its gradient as soon as backward has
// finished it (the leaf's .grad is released) and adds it into its bucket; a bucket whose
// parameters are all in is reduced at once, asynchronously, while backward goes on; buckets are
// always launched in bucket order, so every rank issues the same collectives in the same order
// (a bucket with a parameter that got no gradient waits for the end of the micro-batch).
//   stage 0, 1            full-size f32 grad buffers accumulate the micro-batches; on the last,
//                         each bucket is all-reduced (reduce-scatter, then all-gather).
//   stage 2, per step     the same buffers; on the last micro-batch each bucket is reduce-scattered
//                         into the owner's f32 shard (Megatron's distributed optimizer).
//   stage 2, per micro    every micro-batch's bucket is reduce-scattered into the owner's f32
//   batch                 shard as it fills, and its staging buffer freed: no full-size gradient
//                         ever lives on a rank (DeepSpeed's ZeRO-2; grad memory 1/dp).
// The sum over ranks is divided by dp: the gradient of the mean loss over the global batch. Sums
// over ranks run in rank order (ordered_reduce_scatter_async), so dp ranks with one micro-batch each
// produce the bits of one process accumulating dp micro-batches in turn (for dp a power of two,
// where dividing by dp is exact).
//
// Step. The gradient norm is the square root of Σ g² over the owned elements (each element is
// owned by one rank), all-reduced over the gradient-statistics group; clipping scales the owned
// gradients by max_norm / (norm + 1e-6) when that is below 1 (torch.nn.utils.clip_grad_norm_).
// AdamW (runtime/optim/adamw.h, the same update as one process) runs on f32 views of the owned
// elements, one per parameter piece, with the parameter's group and its own step count; a parameter
// that got no gradient on any rank this step is skipped, as torch skips it. The updated elements
// are all-gathered (stage 1, 2; stage 0 updates every element on every rank) and copied into the
// parameters, rounded to their dtype; the f32 values of the owned elements are the master weights.
//
// Use, per optimizer step of `accum` micro-batches:
//   for (i = 0; i < accum; ++i) { zero.begin_micro_batch(i == accum - 1); loss.backward(); zero.end_micro_batch(); }
//   double norm = zero.reduce_gradients();  if (clip > 0) zero.clip_gradients(clip, norm);
//   if (finite(norm)) zero.step(lr_multiplier);  zero.zero_grad();
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/optim/adamw.h"
#include "runtime/tensor.h"

namespace bvllm::parallel {

enum class GradReduce { PerStep, PerMicroBatch };

struct ZeroOptions {
  int stage = 2;                                  // 0, 1 or 2
  GradReduce reduce = GradReduce::PerMicroBatch;  // stage 2: when gradients are reduce-scattered
  int64_t bucket_elements = int64_t{1} << 24;     // a bucket closes once it holds this many
  optim::AdamWOptions adamw;
};

struct ZeroParamGroup {
  std::vector<std::pair<std::string, Tensor>> params;  // name (for checkpoints and messages), leaf
  double weight_decay = 0;
};

// What lives on this rank, in bytes.
struct ZeroMemory {
  int64_t grad_bytes = 0;          // persistent gradient buffers (full-size buffers, owned shards)
  int64_t peak_staging_bytes = 0;  // the most bucket staging buffers held at once (stage 2 per micro-batch)
  int64_t state_bytes = 0;         // AdamW moments and f32 master of the owned elements
  int64_t owned_elements = 0;      // elements this rank updates
  int64_t total_elements = 0;      // trainable elements (without padding)
};

// One piece of a parameter's optimizer state: elements [flat_start, flat_start + values.numel())
// of the flattened tensor `name` whose shape is `global_shape`.
struct ZeroStateSlice {
  std::string name;  // "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.master"
  std::vector<int64_t> global_shape;
  int64_t flat_start = 0;
  Tensor values;  // f32, 1-D
};

class ZeroOptimizer {
 public:
  // Every rank of `dp` passes the same parameters in the same order; they are broadcast from dp
  // rank 0 so every replica starts equal. `grad_stats` sums the gradient norm (the dp group when
  // there is no model parallelism). Both communicators must outlive the optimizer.
  ZeroOptimizer(std::vector<ZeroParamGroup> groups, Communicator& dp, Communicator& grad_stats,
                const ZeroOptions& options);
  ~ZeroOptimizer();
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  void begin_micro_batch(bool last);
  void end_micro_batch();
  // After the last micro-batch: divides by dp, returns the global gradient norm (NaN/inf when a
  // gradient is not finite on any rank).
  double reduce_gradients();
  void clip_gradients(double max_norm, double norm);
  void step(double lr_multiplier);
  void zero_grad();

  // Checkpoints. state_slices(): this rank's share of every parameter's state (each element saved
  // by exactly one rank), and steps(): every parameter's step count (the same on every rank).
  std::vector<ZeroStateSlice> state_slices() const;
  std::vector<std::pair<std::string, int64_t>> steps() const;
  // Restores after the parameters have been loaded: `read(name, start, length)` returns elements
  // [start, start + length) of the flattened saved tensor `name` (f32), or nothing when the
  // checkpoint has none; `step(param)` the saved step count (0 or nothing: not updated yet).
  // Works for a checkpoint saved with another dp or stage.
  void load_state(const std::function<std::optional<Tensor>(const std::string&, int64_t, int64_t)>& read,
                  const std::function<int64_t(const std::string&)>& step);

  ZeroMemory memory() const;
  int stage() const { return options_.stage; }
  GradReduce reduce() const { return options_.reduce; }

 private:
  struct Slot;
  struct Bucket;
  struct Shared;

  void on_grad_ready(size_t slot, Tensor& leaf);
  void launch_complete_buckets();
  void launch(Bucket& b);
  void complete(Bucket& b);
  void progress();
  bool full_buffers() const;
  void publish();

  ZeroOptions options_;
  Communicator& dp_;
  Communicator& grad_stats_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<optim::AdamW> adamw_;
  std::shared_ptr<Shared> shared_;  // what the hooks reach; outlives this object if the params do
  bool in_micro_batch_ = false, last_micro_batch_ = false, reduced_ = false;
  size_t next_launch_ = 0;
  int64_t staging_bytes_ = 0, peak_staging_bytes_ = 0;
};

}  // namespace bvllm::parallel
