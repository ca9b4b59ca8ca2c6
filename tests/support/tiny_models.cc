#include "tests/support/tiny_models.h"

namespace bvllm::testing {

layers::EvaVitConfig tiny_eva_config() {
  layers::EvaVitConfig c;
  c.image_size = 42;
  c.patch_size = 14;
  c.width = 24;
  c.depth = 2;
  c.heads = 4;
  c.mlp_hidden = layers::EvaVitConfig::mlp_hidden_for(24);
  c.layer_norm_eps = 1e-6;
  return c;
}

layers::QFormerConfig tiny_qformer_config() {
  layers::QFormerConfig c;
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.intermediate_size = 48;
  c.max_position_embeddings = 24;
  c.encoder_width = 24;
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 0.0;
  return c;
}

layers::BvllmConfig tiny_bvllm_config() {
  layers::BvllmConfig c;
  c.vision = tiny_eva_config();
  c.qformer = tiny_qformer_config();
  c.llm = {.vocab_size = 64,
           .hidden_size = 48,
           .intermediate_size = 96,
           .num_hidden_layers = 2,
           .num_attention_heads = 4,
           .num_key_value_heads = 2,
           .head_dim = 12,
           .rms_norm_eps = 1e-6,
           .rope_theta = 1e6};
  c.num_query_tokens = 6;
  c.temporal_queries = 4;
  c.spatial_queries = 6;
  return c;
}

}  // namespace bvllm::testing
