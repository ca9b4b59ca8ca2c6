#include "tools/train/model_builder.h"

#include <glog/logging.h>

#include <filesystem>
#include <map>
#include <regex>

#include "layers/bvllm_checkpoint.h"
#include "layers/linear.h"
#include "parallel/checkpoint.h"
#include "runtime/error.h"
#include "runtime/io/safetensors.h"
#include "runtime/rng.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;
using layers::NamePattern;

// Generator streams drawn from the recipe's seed (stream 0 is the Gumbel noise, tools/train/trainer).
constexpr uint64_t kInitStream = 1;
constexpr uint64_t kLoraStream = 2;

bool is_llm_parameter(const std::string& name) {
  return name.rfind("model.vision_tower.", 0) != 0 && name.rfind("model.vlm_att_", 0) != 0;
}

// Step 2: every LLM parameter from the Hugging Face directory's safetensors.
void load_llm_dir(layers::BvllmForCausalLM& model, const std::string& dir, const std::string& source) {
  std::map<std::string, Tensor> file = load_safetensors_dir(dir);
  std::map<std::string, Tensor> llm;
  std::vector<std::string> missing;
  for (const auto& [name, tensor] : model.named_parameters()) {
    if (!is_llm_parameter(name)) continue;
    auto it = file.find(name);
    if (it == file.end()) {
      missing.push_back(name);
    } else {
      llm.emplace(name, it->second);
    }
  }
  BVLLM_REQUIRE(missing.empty(), source, ": model.llm_dir: ", dir, " has no tensor ", missing.front(), " (and ",
                missing.size() - 1, " more LLM parameters are missing)");
  model.load_state_dict(llm, {.allow_missing = true, .source = dir});
}

// Step 4: every parameter from a previous stage's checkpoint.
void load_init_from(layers::BvllmForCausalLM& model, const std::string& path, const std::string& source) {
  const parallel::Checkpoint checkpoint = parallel::load_checkpoint(path);
  auto it = checkpoint.tensors.find("model");
  BVLLM_REQUIRE(it != checkpoint.tensors.end(), source, ": checkpoint.init_from: ", path,
                " has no model tensors (model.safetensors)");
  std::map<std::string, Tensor> tensors(it->second.begin(), it->second.end());
  // Every parameter of this model must come from the checkpoint; extra tensors (a previous stage's
  // LoRA adapters) are an error too, since they would be silently dropped.
  model.load_state_dict(tensors, {.source = str_cat("checkpoint.init_from ", path)});
}

int64_t apply_patterns(layers::BvllmForCausalLM& model, const google::protobuf::RepeatedPtrField<std::string>& globs,
                       bool requires_grad, const std::string& source, const char* field) {
  int64_t total = 0;
  for (const std::string& glob : globs) {
    const int64_t n = model.set_requires_grad(NamePattern::glob(glob), requires_grad);
    BVLLM_REQUIRE(n > 0, source, ": ", field, ": \"", glob,
                  "\" matches no parameter (patterns match full names such as "
                  "\"model.vlm_att_encoder_temporal.bert.encoder.layer.0.attention.self.query.weight\")");
    total += n;
  }
  return total;
}

// Step 5: adapters on the LLM linears whose module name the regex finds.
int64_t add_lora(layers::BvllmForCausalLM& model, const recipes::Lora& lora, Generator& gen,
                 const std::string& source) {
  const std::regex target(lora.target_regex());
  const layers::LoraOptions options{.rank = lora.rank(), .alpha = lora.alpha(), .dropout = lora.dropout()};
  int64_t added = 0;
  for (const auto& [name, module] : model.named_modules()) {
    auto* linear = dynamic_cast<layers::Linear*>(module);
    if (linear == nullptr || !is_llm_parameter(name + ".") || name == "lm_head") continue;
    if (name.find(".lora_") != std::string::npos || !std::regex_search(name, target)) continue;
    linear->add_lora(options, gen);  // on the weight's device; no init on the meta device
    ++added;
  }
  BVLLM_REQUIRE(added > 0, source, ": lora.target_regex: \"", lora.target_regex(),
                "\" finds no linear of the LLM (module names look like model.layers.0.self_attn.q_proj)");
  return added;
}

}  // namespace

layers::BvllmConfig bvllm_config(const recipes::Recipe& recipe, const std::string& source, int64_t bert_vocab_size) {
  const recipes::ModelConfig& m = recipe.model();
  layers::BvllmConfig c;
  layers::EvaVitConfig& v = c.vision;
  v.image_size = m.vision().image_size();
  v.patch_size = m.vision().patch_size();
  v.width = m.vision().width();
  v.depth = m.vision().depth();
  v.heads = m.vision().num_heads();
  v.mlp_hidden = static_cast<int64_t>(static_cast<double>(v.width) * m.vision().mlp_ratio());
  v.sincos_position_init = m.vision().sincos_position_init();

  layers::QFormerConfig& q = c.qformer;
  q = layers::QFormerConfig::bert_base();
  q.vocab_size = bert_vocab_size;
  q.hidden_size = m.qformer().hidden_size();
  q.num_hidden_layers = m.qformer().num_layers();
  q.num_attention_heads = m.qformer().num_heads();
  q.intermediate_size = m.qformer().intermediate_size();
  q.cross_attention_freq = m.qformer().cross_attention_freq();
  q.encoder_width = v.width;

  if (m.has_llm_dir()) {
    c.llm = layers::Qwen2Config::from_file((fs::path(m.llm_dir()) / "config.json").string());
  } else {
    const recipes::Qwen2Sizes& s = m.llm();
    c.llm.vocab_size = s.vocab_size();
    c.llm.hidden_size = s.hidden_size();
    c.llm.intermediate_size = s.intermediate_size();
    c.llm.num_hidden_layers = s.num_layers();
    c.llm.num_attention_heads = s.num_heads();
    c.llm.num_key_value_heads = s.num_kv_heads();
    c.llm.head_dim = s.hidden_size() / s.num_heads();
    c.llm.rope_theta = s.rope_theta();
    c.llm.rms_norm_eps = s.rms_norm_eps();
    c.llm.tie_word_embeddings = s.tie_word_embeddings();
  }

  // InstructBLIP's checkpoint carries 32 query tokens; a randomly initialized model needs as many as
  // the larger of its two uses.
  c.num_query_tokens = std::max(m.temporal_queries(), m.spatial_queries());
  if (!m.qformer().checkpoint().empty()) c.num_query_tokens = std::max<int64_t>(c.num_query_tokens, 32);
  c.temporal_queries = m.temporal_queries();
  c.spatial_queries = m.spatial_queries();
  c.token_budget = m.token_budget();
  c.selection_feature = static_cast<layers::SelectionFeature>(m.selection_feature());
  c.chronological_order = m.chronological_order();
  c.gumbel_tau = m.gumbel_tau();
  c.validate(source + ": model");
  return c;
}

Tokenizers load_tokenizers(const recipes::Recipe& recipe, const std::string& source) {
  const recipes::ModelConfig& m = recipe.model();
  const std::string qwen_path =
      !m.tokenizer().empty() ? m.tokenizer() : (fs::path(m.llm_dir()) / "tokenizer.json").string();
  BVLLM_REQUIRE(!m.qformer().bert_vocab().empty(), source,
                ": model.qformer.bert_vocab: required (the Q-Formers' vocab.txt, e.g. bert-base-uncased's)");
  return Tokenizers{Qwen2Tokenizer::load(qwen_path), BertTokenizer::from_vocab_file(m.qformer().bert_vocab())};
}

data::LoaderOptions loader_options(const recipes::Recipe& recipe, int rank, int world) {
  data::LoaderOptions o = data::LoaderOptions::for_stage(static_cast<int>(recipe.data().stage()));
  o.shards = recipe.data().shards();
  o.rank = rank;
  o.world = world;
  o.seed = recipe.seed();
  o.batch_size = recipe.batch().micro_batch();
  o.frames = recipe.model().frames_per_sample();
  o.image_size = static_cast<int>(recipe.model().vision().image_size());
  o.pad_to_square = recipe.data().image_pad();
  o.max_length = recipe.data().max_length();
  return o;
}

BuiltModel build_model(const recipes::Recipe& recipe, const std::string& source, int64_t bert_vocab_size,
                       const BuildOptions& options) {
  const layers::BvllmConfig config = bvllm_config(recipe, source, bert_vocab_size);
  BuiltModel built;
  {
    layers::ParameterDeviceScope scope(options.meta ? Device::meta() : Device::cpu());
    built.model = std::make_shared<layers::BvllmForCausalLM>(config);
  }
  layers::BvllmForCausalLM& model = *built.model;

  if (!options.meta) {
    Generator init{.seed = recipe.seed(), .stream = kInitStream};
    model.reset_parameters(init, config.llm.initializer_range);
    if (const double qf_std = recipe.model().qformer().init_std(); qf_std != config.llm.initializer_range) {
      model.bvllm().vlm_att_encoder_temporal->reset_parameters(init, qf_std);
      model.bvllm().vlm_att_encoder_spatial->reset_parameters(init, qf_std);
    }
    if (options.load_weights) {
      const recipes::ModelConfig& m = recipe.model();
      if (m.has_llm_dir()) load_llm_dir(model, m.llm_dir(), source);
      if (!m.vision().checkpoint().empty()) layers::load_lavis_vision_tower(model, m.vision().checkpoint());
      if (!m.qformer().checkpoint().empty()) layers::load_instructblip_qformers(model, m.qformer().checkpoint());
      if (!recipe.checkpoint().init_from().empty()) load_init_from(model, recipe.checkpoint().init_from(), source);
    }
  }

  if (recipe.lora().rank() > 0) {
    Generator lora{.seed = recipe.seed(), .stream = kLoraStream};
    built.lora_modules = add_lora(model, recipe.lora(), lora, source);
  }

  model.set_requires_grad(false);
  apply_patterns(model, recipe.trainable().unfreeze(), true, source, "trainable.unfreeze");
  apply_patterns(model, recipe.trainable().freeze(), false, source, "trainable.freeze");
  if (built.lora_modules > 0) model.unfreeze(NamePattern::glob("*.lora_[AB].*"));
  for (const auto& [name, tensor] : model.named_trainable_parameters()) built.trainable.push_back(name);
  BVLLM_REQUIRE(!built.trainable.empty(), source,
                ": trainable: nothing trains (set trainable.unfreeze patterns or lora.rank)");
  return built;
}

}  // namespace bvllm::train
