// A Qwen2 decoder layer as a function of its weights (modeling_qwen2.py, Qwen2DecoderLayer):
//   h = x + o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))   causal GQA
//   y = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
// Weights carry Hugging Face names. The Qwen2 model (issue 4) builds its layers from this.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runtime/ops.h"

namespace bvllm::layers {

struct Qwen2BlockConfig {
  int64_t hidden = 512;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t ffn = 1408;
  double rms_eps = 1e-6;
  double rope_theta = 1e6;
  int64_t head_dim() const { return hidden / heads; }
};

struct Qwen2BlockWeights {
  Tensor input_layernorm, q_proj_weight, q_proj_bias, k_proj_weight, k_proj_bias, v_proj_weight, v_proj_bias,
      o_proj_weight, post_attention_layernorm, gate_proj_weight, up_proj_weight, down_proj_weight;

  // (Hugging Face name without the "model.layers.N." prefix, tensor), in checkpoint order.
  std::vector<std::pair<std::string, Tensor*>> named();
  // Normal(0, 0.02) matrices and zero biases from `gen`, norms at one (Qwen2's initializer).
  static Qwen2BlockWeights init(const Qwen2BlockConfig& config, Generator& gen, DType dtype = DType::F32);
};

// x [B, L, hidden]; cos/sin [L, head_dim] or [B, L, head_dim] from ops::rotary_tables (HalfSplit).
Tensor qwen2_block(const Qwen2BlockWeights& w, const Qwen2BlockConfig& config, const Tensor& x, const Tensor& cos,
                   const Tensor& sin);

}  // namespace bvllm::layers
