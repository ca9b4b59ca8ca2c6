#include "tests/support/tiny_models.h"

namespace bvllm::testing {

layers::BvllmConfig tiny_bvllm_config() {
  layers::BvllmConfig c;
  c.vision.image_size = 42;  // grid 3: 9 patches + CLS
  c.vision.patch_size = 14;
  c.vision.width = 24;
  c.vision.depth = 2;
  c.vision.heads = 4;
  c.vision.mlp_hidden = layers::EvaVitConfig::mlp_hidden_for(24);
  c.qformer.vocab_size = 40;
  c.qformer.hidden_size = 32;
  c.qformer.num_hidden_layers = 4;  // cross-attention on layers 0 and 2
  c.qformer.num_attention_heads = 4;
  c.qformer.intermediate_size = 48;
  c.qformer.max_position_embeddings = 24;
  c.qformer.encoder_width = 24;
  c.qformer.hidden_dropout_prob = 0.0;
  c.qformer.attention_probs_dropout_prob = 0.0;
  layers::Qwen2Config& q = c.llm;
  q.vocab_size = 64;
  q.hidden_size = 48;
  q.intermediate_size = 96;
  q.num_hidden_layers = 2;
  q.num_attention_heads = 4;
  q.num_key_value_heads = 2;
  q.head_dim = 12;
  q.rope_theta = 1e6;
  q.rms_norm_eps = 1e-6;
  c.num_query_tokens = 6;
  c.temporal_queries = 4;
  c.spatial_queries = 6;
  return c;
}

}  // namespace bvllm::testing
