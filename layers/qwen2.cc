#include "layers/qwen2.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>  // defines: nlohmann::json, nlohmann::ordered_json
#include <sstream>

#include "runtime/ops.h"

namespace bvllm::layers {

// --- Qwen2Config -------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

// Reads typed fields of one config object, with errors that name the file and the field.
class ConfigReader {
 public:
  ConfigReader(const json& root, const std::string& origin) : root_(root), origin_(origin) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(str_cat(origin_, ": field '", field, "' ", what));
  }
  bool present(const char* field) const { return root_.contains(field) && !root_[field].is_null(); }

  int64_t integer(const char* field) const {
    if (!root_.contains(field)) fail(field, "is missing");
    return integer_value(field, root_[field]);
  }
  int64_t integer(const char* field, int64_t fallback) const {
    return present(field) ? integer_value(field, root_[field]) : fallback;
  }
  int64_t integer_value(const std::string& field, const json& v) const {
    if (!v.is_number_integer()) fail(field, str_cat("must be an integer, got ", v.dump()));
    return v.get<int64_t>();
  }
  double number(const char* field, double fallback) const {
    return present(field) ? number_value(field, root_[field]) : fallback;
  }
  double number_value(const std::string& field, const json& v) const {
    if (!v.is_number()) fail(field, str_cat("must be a number, got ", v.dump()));
    return v.get<double>();
  }
  bool boolean(const char* field, bool fallback) const {
    if (!present(field)) return fallback;
    if (!root_[field].is_boolean()) fail(field, str_cat("must be true or false, got ", root_[field].dump()));
    return root_[field].get<bool>();
  }
  std::string string(const char* field, const std::string& fallback) const {
    if (!present(field)) return fallback;
    if (!root_[field].is_string()) fail(field, str_cat("must be a string, got ", root_[field].dump()));
    return root_[field].get<std::string>();
  }

 private:
  const json& root_;
  std::string origin_;
};

// rope_type of a rope_scaling / rope_parameters object ("type" is the legacy key).
std::string rope_type(const ConfigReader& r, const json& rope, const std::string& field) {
  if (!rope.is_object()) r.fail(field, str_cat("must be an object or null, got ", rope.dump()));
  const json& type = rope.contains("rope_type") ? rope["rope_type"] : rope.contains("type") ? rope["type"] : json();
  if (type.is_null()) return "default";
  if (!type.is_string()) r.fail(field + ".rope_type", str_cat("must be a string, got ", type.dump()));
  return type.get<std::string>();
}

}  // namespace

Qwen2Config Qwen2Config::from_json(const std::string& text, const std::string& origin) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str_cat(origin, ": not valid JSON: ", e.what()));
  }
  BVLLM_REQUIRE(root.is_object(), origin, ": expected a JSON object, got ", root.dump().substr(0, 80));
  ConfigReader r(root, origin);

  const std::string model_type = r.string("model_type", "qwen2");
  if (model_type != "qwen2") r.fail("model_type", str_cat("is \"", model_type, "\"; bvllm reads \"qwen2\" models"));

  Qwen2Config c;
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  if (r.present("head_dim")) {
    c.head_dim = r.integer("head_dim");
  } else {
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
      r.fail("head_dim", str_cat("is missing and hidden_size ", c.hidden_size,
                                 " is not a multiple of num_attention_heads ", c.num_attention_heads));
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = r.integer("max_position_embeddings", 32768);
  c.initializer_range = r.number("initializer_range", 0.02);
  if (r.present("bos_token_id")) c.bos_token_id = r.integer("bos_token_id");
  if (r.present("eos_token_id")) {
    const json& eos = root["eos_token_id"];
    if (eos.is_array()) {
      for (const json& id : eos) c.eos_token_ids.push_back(r.integer_value("eos_token_id", id));
    } else {
      c.eos_token_ids.push_back(r.integer("eos_token_id"));
    }
  }
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", ""));

  // rope_theta at the top level (transformers v4) or inside rope_parameters (v5); when both are
  // there they must agree.
  std::optional<double> theta;
  if (r.present("rope_theta")) theta = r.number("rope_theta", 0);
  if (r.present("rope_parameters")) {
    const json& rope = root["rope_parameters"];
    const std::string type = rope_type(r, rope, "rope_parameters");
    if (type != "default")
      r.fail("rope_parameters", str_cat("has rope_type \"", type, "\"; only default RoPE is supported"));
    if (rope.contains("rope_theta")) {
      const double t = r.number_value("rope_parameters.rope_theta", rope["rope_theta"]);
      if (theta && *theta != t) r.fail("rope_parameters.rope_theta", str_cat("is ", t, " but rope_theta is ", *theta));
      theta = t;
    }
  }
  c.rope_theta = theta.value_or(10000.0);
  if (r.present("rope_scaling")) {
    const std::string type = rope_type(r, root["rope_scaling"], "rope_scaling");
    if (type != "default")
      r.fail("rope_scaling", str_cat("has rope_type \"", type, "\"; only default RoPE is supported"));
  }

  // What bvllm does not implement: refuse rather than compute something else.
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", str_cat("is \"", act, "\"; Qwen2 uses \"silu\""));
  if (r.boolean("use_sliding_window", false))
    r.fail("use_sliding_window", "is true; sliding-window attention is not supported");
  if (r.number("attention_dropout", 0.0) != 0.0)
    r.fail("attention_dropout", "must be 0 (attention dropout is not supported)");

  c.validate(origin);
  return c;
}

Qwen2Config Qwen2Config::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open: ", std::strerror(errno));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return from_json(buffer.str(), path);
}

void Qwen2Config::validate(const std::string& origin) const {
  auto positive = [&](const char* field, int64_t v) {
    BVLLM_REQUIRE(v > 0, origin, ": field '", field, "' must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  BVLLM_REQUIRE(num_attention_heads % num_key_value_heads == 0, origin, ": num_attention_heads ", num_attention_heads,
                " is not a multiple of num_key_value_heads ", num_key_value_heads);
  BVLLM_REQUIRE(head_dim % 2 == 0, origin, ": head_dim ", head_dim, " must be even (RoPE rotates pairs)");
  BVLLM_REQUIRE(rms_norm_eps > 0, origin, ": field 'rms_norm_eps' must be positive, got ", rms_norm_eps);
  BVLLM_REQUIRE(rope_theta > 0, origin, ": rope_theta must be positive, got ", rope_theta);
}

std::string Qwen2Config::to_json(DType dtype) const {
  const char* dtype_text = dtype == DType::BF16 ? "bfloat16" : dtype == DType::F16 ? "float16" : "float32";
  nlohmann::ordered_json j;
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["attention_dropout"] = 0.0;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  if (head_dim * num_attention_heads != hidden_size) j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["initializer_range"] = initializer_range;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["max_window_layers"] = num_hidden_layers;
  j["model_type"] = "qwen2";
  j["num_attention_heads"] = num_attention_heads;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_key_value_heads"] = num_key_value_heads;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = rope_theta;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = dtype_text;
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = vocab_size;
  return j.dump(2) + "\n";
}

// --- modules -----------------------------------------------------------------------------------

Qwen2Attention::Qwen2Attention(const Qwen2Config& c, DType dtype)
    : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim) {
  c.validate();
  q_proj = register_module("q_proj", std::make_shared<Linear>(c.hidden_size, heads_ * head_dim_, true, dtype));
  k_proj = register_module("k_proj", std::make_shared<Linear>(c.hidden_size, kv_heads_ * head_dim_, true, dtype));
  v_proj = register_module("v_proj", std::make_shared<Linear>(c.hidden_size, kv_heads_ * head_dim_, true, dtype));
  o_proj = register_module("o_proj", std::make_shared<Linear>(heads_ * head_dim_, c.hidden_size, false, dtype));
}

Tensor Qwen2Attention::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, LayerKVCache* cache) const {
  BVLLM_REQUIRE(x.dim() == 3 && x.size(2) == q_proj->in_features(), "Qwen2Attention: input must be [B, L, ",
                q_proj->in_features(), "], got ", shape_str(x.shape()));
  const int64_t b = x.size(0), l = x.size(1);
  // [B, L, n * D] -> [B, n, L, D]: head i is rows [i D, (i + 1) D) of the projection.
  auto heads = [&](const Tensor& t, int64_t n) { return t.view({b, l, n, head_dim_}).transpose(1, 2); };
  Tensor q = heads(q_proj->forward(x), heads_);
  Tensor k = heads(k_proj->forward(x), kv_heads_);
  Tensor v = heads(v_proj->forward(x), kv_heads_);
  q = ops::rotary(q, cos, sin, ops::RotaryStyle::HalfSplit);
  k = ops::rotary(k, cos, sin, ops::RotaryStyle::HalfSplit);
  if (cache != nullptr) {
    if (cache->k.defined()) {
      k = ops::concat({cache->k, k}, 2);
      v = ops::concat({cache->v, v}, 2);
    }
    cache->k = k;
    cache->v = v;
  }
  Tensor a = ops::scaled_dot_product_attention(q, k, v, {.causal = true});
  return o_proj->forward(a.transpose(1, 2).reshape({b, l, heads_ * head_dim_}));
}

Qwen2MLP::Qwen2MLP(const Qwen2Config& c, DType dtype) {
  gate_proj = register_module("gate_proj", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, false, dtype));
  up_proj = register_module("up_proj", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, false, dtype));
  down_proj = register_module("down_proj", std::make_shared<Linear>(c.intermediate_size, c.hidden_size, false, dtype));
}

Tensor Qwen2MLP::forward(const Tensor& x) const {
  return down_proj->forward(ops::swiglu(gate_proj->forward(x), up_proj->forward(x)));  // silu(gate) * up
}

Qwen2DecoderLayer::Qwen2DecoderLayer(const Qwen2Config& c, DType dtype) {
  // Registration order = transformers' state-dict order.
  self_attn = register_module("self_attn", std::make_shared<Qwen2Attention>(c, dtype));
  mlp = register_module("mlp", std::make_shared<Qwen2MLP>(c, dtype));
  input_layernorm = register_module("input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
  post_attention_layernorm =
      register_module("post_attention_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
}

Tensor Qwen2DecoderLayer::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, LayerKVCache* cache) const {
  Tensor h = ops::add(x, self_attn->forward(input_layernorm->forward(x), cos, sin, cache));
  return ops::add(h, mlp->forward(post_attention_layernorm->forward(h)));
}

Qwen2Model::Qwen2Model(const Qwen2Config& c, DType dtype) : config_(c) {
  c.validate();
  embed_tokens = register_module("embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype));
  layers = register_module("layers", std::make_shared<ModuleList<Qwen2DecoderLayer>>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(std::make_shared<Qwen2DecoderLayer>(c, dtype));
  norm = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
}

Tensor Qwen2Model::forward(const Tensor& ids, const Qwen2ForwardOptions& options) const {
  BVLLM_REQUIRE(ids.dim() == 2, "Qwen2Model: ids must be [B, L], got ", shape_str(ids.shape()));
  return forward_embeds(embed_tokens->forward(ids), options);
}

Tensor Qwen2Model::forward_embeds(const Tensor& embeds, const Qwen2ForwardOptions& options) const {
  BVLLM_REQUIRE(embeds.dim() == 3 && embeds.size(2) == config_.hidden_size, "Qwen2Model: embeddings must be [B, L, ",
                config_.hidden_size, "], got ", shape_str(embeds.shape()));
  const int64_t b = embeds.size(0), l = embeds.size(1);
  const int64_t past = options.cache != nullptr ? options.cache->length() : 0;
  Tensor positions = options.positions;
  if (!positions.defined()) {
    positions = ops::arange(static_cast<double>(past), static_cast<double>(past + l));
  } else {
    BVLLM_REQUIRE((positions.dim() == 1 && positions.size(0) == l) ||
                      (positions.dim() == 2 && positions.size(0) == b && positions.size(1) == l),
                  "Qwen2Model: positions must be [", l, "] or [", b, ", ", l, "], got ", shape_str(positions.shape()));
  }
  // cos/sin in f32 as transformers computes them; ops::rotary casts them to the activations' dtype.
  auto [cos, sin] = ops::rotary_tables(positions.to(Device::cpu()), config_.head_dim, config_.rope_theta,
                                       ops::RotaryStyle::HalfSplit);
  cos = cos.to(embeds.device());
  sin = sin.to(embeds.device());
  Tensor h = embeds;
  for (size_t i = 0; i < layers->size(); ++i) {
    LayerKVCache* cache = options.cache != nullptr ? &options.cache->layer(i) : nullptr;
    h = (*layers)[i].forward(h, cos, sin, cache);
  }
  return norm->forward(h);
}

Qwen2ForCausalLM::Qwen2ForCausalLM(const Qwen2Config& c, DType dtype)
    : Qwen2ForCausalLM(c, std::make_shared<Qwen2Model>(c, dtype), dtype) {}

Qwen2ForCausalLM::Qwen2ForCausalLM(const Qwen2Config& c, std::shared_ptr<Qwen2Model> base, DType dtype) : config_(c) {
  model = register_module("model", std::move(base));
  if (!c.tie_word_embeddings)
    lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, dtype));
}

const Tensor& Qwen2ForCausalLM::lm_head_weight() const {
  return lm_head ? lm_head->weight() : model->embed_tokens->weight();
}

Tensor Qwen2ForCausalLM::lm_logits(const Tensor& hidden) const {
  return lm_head ? lm_head->forward(hidden) : ops::linear(hidden, model->embed_tokens->weight());
}

Tensor Qwen2ForCausalLM::forward(const Tensor& ids, const Qwen2ForwardOptions& options) const {
  BVLLM_REQUIRE(ids.dim() == 2, "Qwen2ForCausalLM: ids must be [B, L], got ", shape_str(ids.shape()));
  return forward_embeds(model->embed_tokens->forward(ids), options);
}

Tensor Qwen2ForCausalLM::forward_embeds(const Tensor& embeds, const Qwen2ForwardOptions& options) const {
  Tensor h = model->forward_embeds(embeds, options);
  const int64_t l = h.size(1), keep = options.logits_to_keep;
  BVLLM_REQUIRE(keep >= 0, "Qwen2ForCausalLM: logits_to_keep must be >= 0, got ", keep);
  if (keep > 0 && keep < l) h = h.narrow(1, l - keep, keep);
  return lm_logits(h);
}

Tensor causal_lm_loss(const Tensor& logits, const Tensor& labels) {
  BVLLM_REQUIRE(
      logits.dim() == 3 && labels.dim() == 2 && labels.size(0) == logits.size(0) && labels.size(1) == logits.size(1),
      "causal_lm_loss: logits must be [B, L, V] and labels [B, L], got ", shape_str(logits.shape()), " and ",
      shape_str(labels.shape()));
  // Shift left and pad with -100: position t is scored against labels[t + 1].
  const int64_t b = labels.size(0), l = labels.size(1);
  std::vector<int64_t> all = labels.to_vector<int64_t>(), shifted(all.size(), -100);
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t t = 0; t + 1 < l; ++t) shifted[i * l + t] = all[i * l + t + 1];
  }
  Tensor targets = Tensor::from<int64_t>(shifted, {b * l}).to(logits.device());
  return ops::cross_entropy(logits.to(DType::F32).reshape({b * l, logits.size(2)}), targets, -100);
}

}  // namespace bvllm::layers
