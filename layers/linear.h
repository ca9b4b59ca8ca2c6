// Linear (torch.nn.Linear: weight [out, in], y = x W^T + b) with an optional LoRA adapter as
// peft's LoraLayer builds it (../shared/research/models-formats.md §5):
//   lora_A.weight [r, in]   kaiming_uniform_(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in))
//   lora_B.weight [out, r]  zeros, so the adapter starts as the identity
//   y = x W^T + b + B(A(dropout(x))) * alpha / r
// The adapter's parameters are named <module>.lora_A.weight and <module>.lora_B.weight (peft's
// on-disk names without the base_model.model. prefix and the adapter name). merge_lora() folds
// B A * alpha / r into the weight and removes the adapter.
#pragma once

#include <memory>

#include "layers/module.h"

namespace bvllm::layers {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 8.0;
  double dropout = 0.0;  // on the adapter's input only, in training mode
};

class Linear : public Module {
 public:
  // Parameters are allocated, not initialized: load them or call reset_parameters.
  Linear(int64_t in_features, int64_t out_features, bool bias, DType dtype = DType::F32);

  Tensor forward(const Tensor& x) const;

  // Adds a rank-r adapter (in the weight's dtype and device); the base weight and bias are left
  // as they are (freezing them is the caller's choice). Refused when one exists.
  void add_lora(const LoraOptions& options, Generator& gen);
  bool has_lora() const { return lora_A_ != nullptr; }
  // W <- W + (B A) * alpha / r, computed in f32 and rounded once to W's dtype; then the adapter
  // is removed. Under no-grad; W keeps its identity, so an optimizer that holds it stays valid.
  void merge_lora();
  double lora_scale() const { return lora_scale_; }
  const LoraOptions& lora_options() const { return lora_; }

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  Tensor& weight() { return weight_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }  // undefined without bias
  Linear* lora_A() const { return lora_A_.get(); }
  Linear* lora_B() const { return lora_B_.get(); }

  // weight normal(0, std), bias zeros; an adapter gets peft's init again (A uniform, B zeros).
  void reset_parameters(Generator& gen, double std) override;

 private:
  void init_lora(Generator& gen);

  int64_t in_, out_;
  Tensor weight_, bias_;
  std::shared_ptr<Linear> lora_A_, lora_B_;
  LoraOptions lora_;
  double lora_scale_ = 0.0;
};

// Adds an adapter to every Linear under `root` whose full module name matches (for Qwen2 e.g.
// glob "*.q_proj" or regex ".*\.(q|k|v|o|gate|up|down)_proj"); returns how many. Adapters
// themselves never match.
int64_t add_lora(Module& root, const NamePattern& modules, const LoraOptions& options, Generator& gen);
// Merges every adapter under `root`; returns how many.
int64_t merge_lora(Module& root);
// True when some Linear under `root` has an adapter.
bool has_lora(Module& root);

}  // namespace bvllm::layers
