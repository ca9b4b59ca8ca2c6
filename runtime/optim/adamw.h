// AdamW exactly as torch.optim.AdamW (amsgrad off, maximize off): decoupled weight decay with the
// current lr, bias-corrected moments, eps added after sqrt(v)/sqrt(1-β2^t). The update formula is
// in runtime/optim/adamw_math.h; research/models-formats.md §6.1 has the derivation and sources.
//
// Parameters come in groups, each with its own weight decay (0 for norms and biases, as the HF
// Trainer does) and its own lr (the optimizer's default unless set). A scheduler calls
// set_lr_multiplier(λ(k)) before step k, which sets every group's lr to base_lr · λ (LambdaLR).
//
// Dtypes: f32 and f64 params keep exp_avg and exp_avg_sq in their own dtype, as torch does.
// bf16 and f16 params keep an f32 master copy in the optimizer state (created from the param at
// its first step); the update runs in f32 on the master and writes the master, rounded to nearest
// even, back into the param. (torch would keep bf16 moments and update the bf16 param directly;
// the master copy is the mixed-precision recipe instead.) The master is authoritative: a param
// changed from outside after its first step must be re-synced with load_state.
//
// The fused update runs on CPU tensors (runtime/cpu/adamw.cc) and, in CUDA builds, on CUDA tensors
// (runtime/cuda/adamw.cu: one multi-tensor launch per device and dtype); params must be contiguous.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm::optim {

// torch.optim.AdamW defaults.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

struct ParamGroup {
  std::vector<Tensor> params;          // leaves with requires_grad, each in one group only
  std::optional<double> lr;            // unset: AdamWOptions::lr
  std::optional<double> weight_decay;  // unset: AdamWOptions::weight_decay
};

// Per-parameter state, as torch's optimizer.state[p] (plus the master copy of half params).
struct AdamWState {
  int64_t step = 0;   // updates applied so far
  Tensor exp_avg;     // m: the param's dtype, or f32 for bf16/f16 params
  Tensor exp_avg_sq;  // v: likewise
  Tensor master;      // f32 copy of a bf16/f16 param; undefined for f32/f64 params
};

class AdamW {
 public:
  explicit AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options = {});
  // One group with the default lr and weight decay.
  explicit AdamW(std::vector<Tensor> params, const AdamWOptions& options = {});

  // One update of every parameter that has a gradient; parameters whose grad is undefined are
  // skipped and their step count does not advance (as torch).
  void step();
  // Clears every gradient (set_grad(Tensor()), torch's zero_grad(set_to_none=True)).
  void zero_grad();

  // The lr of every group, or of one group. Base lrs are unchanged.
  void set_lr(double lr);
  void set_lr(size_t group, double lr);
  // lr = base_lr · multiplier for every group (what LambdaLR does with λ(k)).
  void set_lr_multiplier(double multiplier);

  size_t num_groups() const { return groups_.size(); }
  const std::vector<Tensor>& params(size_t group) const;
  double lr(size_t group = 0) const;
  double base_lr(size_t group = 0) const;
  double weight_decay(size_t group = 0) const;
  const AdamWOptions& options() const { return options_; }

  // Checkpointing. state() is null until the param's first update. load_state() validates shapes
  // and copies the tensors into the state's dtype; an undefined master (for a bf16/f16 param) is
  // taken from the param's current values.
  const AdamWState* state(const Tensor& param) const;
  void load_state(const Tensor& param, const AdamWState& state);

 private:
  struct Group {
    std::vector<Tensor> params;
    double lr;
    double base_lr;
    double weight_decay;
  };
  struct Slot {
    Tensor param;
    AdamWState state;
  };

  size_t slot_of(const Tensor& param, const char* what) const;  // throws for strangers
  void update(Slot& slot, const Group& group);

  AdamWOptions options_;
  std::vector<Group> groups_;
  std::vector<Slot> slots_;                                   // one per param, in group order
  std::unordered_map<const TensorImpl*, size_t> slot_index_;  // param identity -> slots_ index
};

}  // namespace bvllm::optim
