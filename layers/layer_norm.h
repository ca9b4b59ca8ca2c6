// LayerNorm as torch.nn.LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * weight +
// bias, with the biased variance — ops::layer_norm (bf16/f16 computed through f32 on the CPU).
// Used by EVA's blocks (eps 1e-6), the Q-Former (eps 1e-12) and B-VLLM's vlm_att_ln_* (eps 1e-5,
// ../shared/research/bvllm.md §12.1).
#pragma once

#include "layers/module.h"

namespace bvllm::layers {

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps, DType dtype = DType::F32);  // weight one, bias zero

  Tensor forward(const Tensor& x) const;  // x [..., dim]

  int64_t dim() const { return weight_.size(0); }
  double eps() const { return eps_; }
  Tensor& weight() { return weight_; }
  const Tensor& weight() const { return weight_; }
  Tensor& bias() { return bias_; }
  const Tensor& bias() const { return bias_; }

  void reset_parameters(Generator& gen, double std) override;  // weight ones, bias zeros

 private:
  Tensor weight_, bias_;
  double eps_;
};

}  // namespace bvllm::layers
