#include "layers/qwen2_block.h"

namespace bvllm::layers {

std::vector<std::pair<std::string, Tensor*>> Qwen2BlockWeights::named() {
  return {{"input_layernorm.weight", &input_layernorm},
          {"self_attn.q_proj.weight", &q_proj_weight},
          {"self_attn.q_proj.bias", &q_proj_bias},
          {"self_attn.k_proj.weight", &k_proj_weight},
          {"self_attn.k_proj.bias", &k_proj_bias},
          {"self_attn.v_proj.weight", &v_proj_weight},
          {"self_attn.v_proj.bias", &v_proj_bias},
          {"self_attn.o_proj.weight", &o_proj_weight},
          {"post_attention_layernorm.weight", &post_attention_layernorm},
          {"mlp.gate_proj.weight", &gate_proj_weight},
          {"mlp.up_proj.weight", &up_proj_weight},
          {"mlp.down_proj.weight", &down_proj_weight}};
}

Qwen2BlockWeights Qwen2BlockWeights::init(const Qwen2BlockConfig& c, Generator& gen, DType dtype) {
  const int64_t q = c.heads * c.head_dim(), kv = c.kv_heads * c.head_dim();
  auto matrix = [&](int64_t rows, int64_t cols) { return ops::normal({rows, cols}, gen, 0.0, 0.02, dtype); };
  Qwen2BlockWeights w;
  w.input_layernorm = ops::ones({c.hidden}, dtype);
  w.q_proj_weight = matrix(q, c.hidden);
  w.q_proj_bias = ops::zeros({q}, dtype);
  w.k_proj_weight = matrix(kv, c.hidden);
  w.k_proj_bias = ops::zeros({kv}, dtype);
  w.v_proj_weight = matrix(kv, c.hidden);
  w.v_proj_bias = ops::zeros({kv}, dtype);
  w.o_proj_weight = matrix(c.hidden, q);
  w.post_attention_layernorm = ops::ones({c.hidden}, dtype);
  w.gate_proj_weight = matrix(c.ffn, c.hidden);
  w.up_proj_weight = matrix(c.ffn, c.hidden);
  w.down_proj_weight = matrix(c.hidden, c.ffn);
  return w;
}

Tensor qwen2_block(const Qwen2BlockWeights& w, const Qwen2BlockConfig& c, const Tensor& x, const Tensor& cos,
                   const Tensor& sin) {
  BVLLM_REQUIRE(x.dim() == 3 && x.size(2) == c.hidden, "qwen2_block: input must be [B, L, ", c.hidden, "], got ",
                shape_str(x.shape()));
  BVLLM_REQUIRE(c.heads % c.kv_heads == 0, "qwen2_block: ", c.heads, " heads are not a multiple of ", c.kv_heads,
                " kv heads");
  const int64_t b = x.size(0), l = x.size(1), d = c.head_dim();
  auto heads = [&](const Tensor& t, int64_t n) { return t.view({b, l, n, d}).transpose(1, 2); };

  Tensor h = ops::rms_norm(x, w.input_layernorm, c.rms_eps);
  Tensor q = heads(ops::linear(h, w.q_proj_weight, w.q_proj_bias), c.heads);
  Tensor k = heads(ops::linear(h, w.k_proj_weight, w.k_proj_bias), c.kv_heads);
  Tensor v = heads(ops::linear(h, w.v_proj_weight, w.v_proj_bias), c.kv_heads);
  q = ops::rotary(q, cos, sin, ops::RotaryStyle::HalfSplit);
  k = ops::rotary(k, cos, sin, ops::RotaryStyle::HalfSplit);
  ops::AttentionOptions causal;
  causal.causal = true;
  Tensor a = ops::scaled_dot_product_attention(q, k, v, causal).transpose(1, 2).reshape({b, l, c.heads * d});
  Tensor r = ops::add(x, ops::linear(a, w.o_proj_weight));

  Tensor m = ops::rms_norm(r, w.post_attention_layernorm, c.rms_eps);
  Tensor gated = ops::swiglu(ops::linear(m, w.gate_proj_weight), ops::linear(m, w.up_proj_weight));
  return ops::add(r, ops::linear(gated, w.down_proj_weight));
}

}  // namespace bvllm::layers
