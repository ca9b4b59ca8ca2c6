// Qwen2 as transformers' modeling_qwen2.py computes it (../shared/research/models-formats.md §1):
//
//   h = embed_tokens[ids]
//   per layer:  h = h + o_proj(attn(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))
//               h = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
//   logits = norm(h) @ lm_head^T      (lm_head = embed_tokens when tie_word_embeddings)
//
// attn is causal grouped-query attention (query head i uses kv head i / n_rep) with q/k/v bias and
// half-split RoPE; a KV cache appends each step's rotated keys and values, and the causal mask is
// aligned bottom-right, so a query at cache position p sees keys 0..p.
//
// Parameter names are the Hugging Face ones (model.layers.N.self_attn.q_proj.weight, ...). A tied
// model has no lm_head module and therefore no lm_head.weight, as the released files.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/module.h"
#include "layers/rms_norm.h"

namespace bvllm::layers {

// config.json of a Qwen2 checkpoint (Qwen2Config in transformers). Every field is resolved: a
// config built in code sets them all (validate() checks), from_json fills the class defaults.
struct Qwen2Config {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // json: missing or null -> num_attention_heads
  int64_t head_dim = 0;             // json: missing -> hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;  // json: rope_theta, or rope_parameters.rope_theta (transformers v5)
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 32768;
  double initializer_range = 0.02;
  std::optional<int64_t> bos_token_id = {};
  std::vector<int64_t> eos_token_ids = {};  // json eos_token_id: an int or a list
  std::string torch_dtype = {};             // as written ("bfloat16"); empty when absent

  // Parses and validates; errors name `origin` (the file), the field and what was expected.
  // Fields bvllm does not implement are refused when set to anything but their default
  // (hidden_act other than silu, rope scaling, sliding window, attention dropout).
  static Qwen2Config from_json(const std::string& text, const std::string& origin = "config.json");
  static Qwen2Config from_file(const std::string& path);
  // config.json as transformers writes it for Qwen2ForCausalLM, torch_dtype = `dtype`.
  std::string to_json(DType dtype) const;
  // Throws bvllm::Error naming `origin` when a size is not positive or sizes disagree.
  void validate(const std::string& origin = "Qwen2Config") const;

  int64_t n_rep() const { return num_attention_heads / num_key_value_heads; }
};

// Keys and values of one layer after RoPE, [B, kv_heads, T, head_dim].
struct LayerKVCache {
  Tensor k, v;
};

class KVCache {
 public:
  explicit KVCache(const Qwen2Config& config) : layers_(config.num_hidden_layers) {}
  int64_t length() const { return layers_.empty() || !layers_[0].k.defined() ? 0 : layers_[0].k.size(2); }
  LayerKVCache& layer(size_t i) { return layers_.at(i); }
  void clear() { layers_.assign(layers_.size(), {}); }

 private:
  std::vector<LayerKVCache> layers_;
};

class Qwen2Attention : public Module {
 public:
  Qwen2Attention(const Qwen2Config& config, DType dtype = DType::F32);
  // x [B, L, hidden]; cos/sin [L, head_dim] or [B, L, head_dim] for the positions of x (HalfSplit
  // tables). With a cache, x's keys and values are appended to it and x attends to all of it.
  Tensor forward(const Tensor& x, const Tensor& cos, const Tensor& sin, LayerKVCache* cache = nullptr) const;

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t heads_, kv_heads_, head_dim_;
};

class Qwen2MLP : public Module {
 public:
  Qwen2MLP(const Qwen2Config& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;  // down_proj(silu(gate_proj(x)) * up_proj(x))

  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
};

class Qwen2DecoderLayer : public Module {
 public:
  Qwen2DecoderLayer(const Qwen2Config& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x, const Tensor& cos, const Tensor& sin, LayerKVCache* cache = nullptr) const;

  std::shared_ptr<Qwen2Attention> self_attn;
  std::shared_ptr<Qwen2MLP> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

struct Qwen2ForwardOptions {
  KVCache* cache = nullptr;    // read and extended; positions continue from cache->length()
  Tensor positions = {};       // i64 [L] or [B, L]; default arange(past, past + L)
  int64_t logits_to_keep = 0;  // Qwen2ForCausalLM: logits of the last N positions only (0: all)
};

// Parameters are allocated, not initialized: load a checkpoint (layers/qwen2_checkpoint.h) or
// call reset_parameters / init_weights.
class Qwen2Model : public Module {
 public:
  Qwen2Model(const Qwen2Config& config, DType dtype = DType::F32);
  // ids [B, L] (i64/i32) -> final hidden states [B, L, hidden] (after norm).
  Tensor forward(const Tensor& ids, const Qwen2ForwardOptions& options = {}) const;
  // The same from input embeddings [B, L, hidden] (where B-VLLM splices in visual tokens).
  Tensor forward_embeds(const Tensor& embeds, const Qwen2ForwardOptions& options = {}) const;

  const Qwen2Config& config() const { return config_; }

  std::shared_ptr<Embedding> embed_tokens;
  std::shared_ptr<ModuleList<Qwen2DecoderLayer>> layers;
  std::shared_ptr<RMSNorm> norm;

 private:
  Qwen2Config config_;
};

class Qwen2ForCausalLM : public Module {
 public:
  Qwen2ForCausalLM(const Qwen2Config& config, DType dtype = DType::F32);
  // ids [B, L] -> logits [B, L', vocab], L' = L or options.logits_to_keep.
  Tensor forward(const Tensor& ids, const Qwen2ForwardOptions& options = {}) const;
  Tensor forward_embeds(const Tensor& embeds, const Qwen2ForwardOptions& options = {}) const;
  // Logits of final hidden states [..., hidden].
  Tensor lm_logits(const Tensor& hidden) const;

  // Qwen2's initializer: normal(0, initializer_range) matrices, zero biases, unit norms.
  void init_weights(Generator& gen) { reset_parameters(gen, config_.initializer_range); }

  const Qwen2Config& config() const { return config_; }
  const Tensor& lm_head_weight() const;  // embed_tokens' weight when tied

  std::shared_ptr<Qwen2Model> model;
  std::shared_ptr<Linear> lm_head;  // null when tied

 protected:
  // For models that extend Qwen2Model (B-VLLM adds its vision side under model.*).
  Qwen2ForCausalLM(const Qwen2Config& config, std::shared_ptr<Qwen2Model> model, DType dtype);

 private:
  Qwen2Config config_;
};

// transformers' causal-LM loss (ForCausalLMLoss): logits [B, L, V] at position t predict
// labels[t + 1]; labels -100 are ignored; the mean over the rest, in f32.
Tensor causal_lm_loss(const Tensor& logits, const Tensor& labels);

}  // namespace bvllm::layers
