#include "layers/bvllm.h"

#include <utility>

#include "layers/temporal_merge.h"
#include "layers/token_merge.h"
#include "runtime/autograd.h"
#include "runtime/error.h"
#include "runtime/ops.h"

namespace bvllm::layers {

// --- configuration -----------------------------------------------------------------------------

BvllmConfig BvllmConfig::paper() {
  BvllmConfig c;
  c.vision = EvaVitConfig::eva_vit_g();
  c.qformer = QFormerConfig::bert_base();
  // Qwen/Qwen2-7B-Instruct's config.json (research/bvllm.md §2.9).
  Qwen2Config& q = c.llm;
  q.vocab_size = 152064;
  q.hidden_size = 3584;
  q.intermediate_size = 18944;
  q.num_hidden_layers = 28;
  q.num_attention_heads = 28;
  q.num_key_value_heads = 4;
  q.head_dim = 128;
  q.rms_norm_eps = 1e-6;
  q.rope_theta = 1e6;
  q.tie_word_embeddings = false;
  q.max_position_embeddings = 32768;
  q.bos_token_id = 151643;
  q.eos_token_ids = {151645};
  q.torch_dtype = "bfloat16";
  return c;
}

void BvllmConfig::validate(const std::string& origin) const {
  vision.validate(origin + ".vision");
  qformer.validate(origin + ".qformer");
  llm.validate(origin + ".llm");
  auto require = [&](bool ok, const char* field, const std::string& expected) {
    if (!ok) throw Error(str_cat(origin, ": field '", field, "' ", expected));
  };
  require(qformer.encoder_width == vision.width, "qformer.encoder_width",
          str_cat("must equal the vision width ", vision.width, ", got ", qformer.encoder_width));
  require(num_query_tokens > 0, "num_query_tokens", str_cat("must be positive, got ", num_query_tokens));
  require(temporal_queries > 0 && temporal_queries <= num_query_tokens, "temporal_queries",
          str_cat("must be in [1, num_query_tokens = ", num_query_tokens, "], got ", temporal_queries));
  require(spatial_queries > 0 && spatial_queries <= num_query_tokens, "spatial_queries",
          str_cat("must be in [1, num_query_tokens = ", num_query_tokens, "], got ", spatial_queries));
  require(gumbel_tau > 0, "gumbel_tau", str_cat("must be positive, got ", gumbel_tau));
  require(merge_threshold >= 0 && merge_threshold <= 1, "merge_threshold",
          str_cat("must be in [0, 1], got ", merge_threshold));
  require(token_budget == 0 || token_budget >= spatial_queries, "token_budget",
          str_cat("must be 0 (off) or at least spatial_queries = ", spatial_queries, ", got ", token_budget));
  require(vision_ln_eps > 0, "vision_ln_eps", str_cat("must be positive, got ", vision_ln_eps));
}

// --- modules -----------------------------------------------------------------------------------

VisionTower::VisionTower(const EvaVitConfig& config, DType dtype) {
  vision_tower = register_module("vision_tower", std::make_shared<EvaVisionTransformer>(config, dtype));
}

namespace {

// The first validate() call must come before any allocation (Qwen2Model validates the LLM part).
const BvllmConfig& validated(const BvllmConfig& config) {
  config.validate();
  return config;
}

}  // namespace

BvllmModel::BvllmModel(const BvllmConfig& config, DType dtype)
    : Qwen2Model(validated(config).llm, dtype), bvllm_config_(config) {
  const BvllmConfig& c = config;
  const int64_t cv = c.vision.width, cq = c.qformer.hidden_size;
  vision_tower = register_module("vision_tower", std::make_shared<VisionTower>(c.vision, dtype));
  vlm_att_encoder_temporal = register_module("vlm_att_encoder_temporal", std::make_shared<QFormer>(c.qformer, dtype));
  vlm_att_encoder_spatial = register_module("vlm_att_encoder_spatial", std::make_shared<QFormer>(c.qformer, dtype));
  vlm_att_query_temporal = empty_parameter({1, c.num_query_tokens, cq}, dtype);
  vlm_att_query_spatial = empty_parameter({1, c.num_query_tokens, cq}, dtype);
  register_parameter("vlm_att_query_temporal", &vlm_att_query_temporal);
  register_parameter("vlm_att_query_spatial", &vlm_att_query_spatial);
  vlm_att_ln_temporal = register_module("vlm_att_ln_temporal", std::make_shared<LayerNorm>(cv, c.vision_ln_eps, dtype));
  vlm_att_ln_spatial = register_module("vlm_att_ln_spatial", std::make_shared<LayerNorm>(cv, c.vision_ln_eps, dtype));
  vlm_att_projector_temporal =
      register_module("vlm_att_projector_temporal", std::make_shared<Linear>(cq, cv, true, dtype));
  vlm_att_projector_spatial =
      register_module("vlm_att_projector_spatial", std::make_shared<Linear>(cq, cv, true, dtype));
  vlm_att_val_projector_spatial =
      register_module("vlm_att_val_projector_spatial", std::make_shared<Linear>(cv, c.llm.hidden_size, true, dtype));
}

void BvllmModel::reset_parameters(Generator& gen, double std) {
  Module::reset_parameters(gen, std);
  NoGradGuard no_grad;  // BLIP-2: query_tokens.normal_(0, initializer_range)
  vlm_att_query_temporal.copy_(ops::normal(vlm_att_query_temporal.shape(), gen, 0.0, std, DType::F32));
  vlm_att_query_spatial.copy_(ops::normal(vlm_att_query_spatial.shape(), gen, 0.0, std, DType::F32));
}

Tensor BvllmModel::visual_tokens(const BvllmSample& sample, const BvllmForwardOptions& options,
                                 VisualSelection* selection) const {
  const BvllmConfig& c = bvllm_config_;
  const DType dtype = vlm_att_query_spatial.dtype();
  const Device device = vlm_att_query_spatial.device();
  const int64_t cv = c.vision.width;

  Tensor vision = sample.vision;
  if (!vision.defined()) {
    BVLLM_REQUIRE(sample.pixels.defined(),
                  "B-VLLM: a sample with a <video>/<image> placeholder needs pixels or "
                  "precomputed vision features");
    vision = vision_tower->vision_tower->forward(sample.pixels.to(device));  // frozen: no graph
  }
  BVLLM_REQUIRE(vision.dim() == 3 && vision.size(0) >= 1 && vision.size(1) >= 2 && vision.size(2) == cv,
                "B-VLLM: vision features must be [T, 1 + P, ", cv, "], got ", shape_str(vision.shape()));
  vision = vision.detach().to(dtype).to(device);
  const int64_t t = vision.size(0), patches = vision.size(1) - 1;

  Tensor bert_ids = sample.bert_ids, bert_mask = sample.bert_mask;
  BVLLM_REQUIRE(bert_ids.defined() && bert_ids.dim() == 1, "B-VLLM: bert_ids must be [Lb] (the question in BERT ids)");
  if (!bert_mask.defined()) bert_mask = ops::ones(bert_ids.shape(), DType::I64);
  BVLLM_REQUIRE(bert_mask.shape() == bert_ids.shape(), "B-VLLM: bert_mask ", shape_str(bert_mask.shape()),
                " does not match bert_ids ", shape_str(bert_ids.shape()));
  const int64_t lb = bert_ids.size(0);
  bert_ids = bert_ids.to(device).reshape({1, lb});
  bert_mask = bert_mask.to(device).reshape({1, lb});

  // Only the patch tokens are normalized (LN_t, also for the spatial path, as released).
  Tensor frames = vlm_att_ln_temporal->forward(vision.narrow(1, 1, patches));  // [T, P, Cv]
  VisualSelection chosen;
  if (t == 1) {
    // An image (or a one-frame video): a softmax over one frame is 1, so F = P and every row of
    // W merges into row 0; the temporal Q-Former would not change the result.
    chosen.weights = ops::ones({c.temporal_queries, 1}, DType::F32);
    chosen.kept = {0};
  } else {
    Tensor feature = selection_feature(vision, c.selection_feature);           // [T, Cv]
    Tensor queries = vlm_att_query_temporal.narrow(1, 0, c.temporal_queries);  // [1, L*, Cq]
    Tensor h_t = vlm_att_encoder_temporal->forward(queries, bert_ids, bert_mask, feature.reshape({1, t, cv}));
    Tensor scores = selection_scores(vlm_att_projector_temporal->forward(h_t.select(0, 0)), feature);  // [L*, T]
    Tensor noise;
    if (sample.gumbel_noise.defined()) {
      noise = sample.gumbel_noise;
    } else if (!options.noise_free) {
      noise = gumbel_noise_like(scores, options.generator != nullptr ? *options.generator : default_generator());
    }
    Tensor weights = gumbel_softmax(scores, c.gumbel_tau, noise);
    if (c.chronological_order) {
      std::vector<int64_t> order = chronological_order(weights);
      weights = ops::index_select(weights, 0, Tensor::from<int64_t>(order).to(device));
    }
    TemporalMergePlan plan = plan_temporal_merge(weights, c.merge_threshold);
    frames = apply_temporal_merge(mix_frames(weights, frames), plan);  // [K', P, Cv]
    chosen.weights = weights.detach();
    chosen.kept = plan.kept;
  }

  const int64_t kept = frames.size(0), q = c.spatial_queries;
  Tensor queries = vlm_att_query_spatial.narrow(1, 0, q);  // [1, Q, Cq]: broadcast over the kept frames
  Tensor h_s = vlm_att_encoder_spatial->forward(queries, bert_ids.expand({kept, lb}).contiguous(),
                                                bert_mask.expand({kept, lb}).contiguous(), frames);  // [K', Q, Cq]
  const int64_t per_frame = t > 1 ? spatial_tokens_per_frame(kept, q, c.token_budget) : q;
  h_s = merge_tokens(h_s, per_frame);
  Tensor z = vlm_att_val_projector_spatial->forward(vlm_att_projector_spatial->forward(h_s));
  chosen.tokens = kept * per_frame;
  if (selection != nullptr) *selection = std::move(chosen);
  return z.reshape({kept * per_frame, c.llm.hidden_size});
}

BvllmForCausalLM::BvllmForCausalLM(const BvllmConfig& config, DType dtype)
    : BvllmForCausalLM(std::make_shared<BvllmModel>(config, dtype), dtype) {}

BvllmForCausalLM::BvllmForCausalLM(std::shared_ptr<BvllmModel> model, DType dtype)
    : Qwen2ForCausalLM(model->bvllm_config().llm, model, dtype), bvllm_(std::move(model)) {}

namespace {

// The position of the sample's one visual placeholder, or -1; any other negative id is refused.
int64_t find_placeholder(const std::vector<int64_t>& ids, size_t sample) {
  int64_t at = -1;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0) continue;
    BVLLM_REQUIRE(ids[i] == kVideoTokenId || ids[i] == kImageTokenId, "B-VLLM: sample ", sample, " has id ", ids[i],
                  " at position ", i, "; the only negative ids are <video> (", kVideoTokenId, ") and <image> (",
                  kImageTokenId, ")");
    BVLLM_REQUIRE(at < 0, "B-VLLM: sample ", sample, " has more than one <video>/<image> placeholder (positions ", at,
                  " and ", i, ")");
    at = static_cast<int64_t>(i);
  }
  return at;
}

}  // namespace

BvllmInput BvllmForCausalLM::input_embeds(const BvllmSample& sample, const BvllmForwardOptions& options,
                                          size_t s) const {
  const BvllmModel& m = *bvllm_;
  const Device device = m.embed_tokens->weight().device();
  const DType dtype = m.embed_tokens->weight().dtype();
  BVLLM_REQUIRE(sample.ids.defined() && sample.ids.dim() == 1 && sample.ids.size(0) > 0, "B-VLLM: sample ", s,
                " needs ids [L > 0]");
  BVLLM_REQUIRE(!sample.labels.defined() || sample.labels.shape() == sample.ids.shape(), "B-VLLM: sample ", s,
                " labels ", shape_str(sample.labels.shape()), " do not match ids ", shape_str(sample.ids.shape()));
  const std::vector<int64_t> ids = sample.ids.to(DType::I64).to(Device::cpu()).to_vector<int64_t>();
  const int64_t at = find_placeholder(ids, s), length = static_cast<int64_t>(ids.size());
  Tensor ids_device = sample.ids.to(DType::I64).to(device);
  Tensor labels = sample.labels.defined() ? sample.labels.to(DType::I64).to(device) : Tensor();
  BvllmInput out;
  if (at < 0) {
    BVLLM_REQUIRE(!sample.pixels.defined() && !sample.vision.defined(), "B-VLLM: sample ", s,
                  " has frames but no <video>/<image> placeholder in its ids");
    out.embeds = m.embed_tokens->forward(ids_device);
    out.labels = labels;
    return out;
  }
  Tensor z = m.visual_tokens(sample, options, &out.visual).to(dtype);
  std::vector<Tensor> parts, label_parts;
  if (at > 0) {
    parts.push_back(m.embed_tokens->forward(ids_device.narrow(0, 0, at)));
    if (labels.defined()) label_parts.push_back(labels.narrow(0, 0, at));
  }
  parts.push_back(z);
  if (labels.defined()) label_parts.push_back(ops::full({z.size(0)}, kIgnoreIndex, DType::I64, device));
  if (at + 1 < length) {
    parts.push_back(m.embed_tokens->forward(ids_device.narrow(0, at + 1, length - at - 1)));
    if (labels.defined()) label_parts.push_back(labels.narrow(0, at + 1, length - at - 1));
  }
  out.embeds = ops::concat(parts, 0);
  if (labels.defined()) out.labels = ops::concat(label_parts, 0);
  out.visual_start = at;
  return out;
}

BvllmOutput BvllmForCausalLM::forward(const std::vector<BvllmSample>& samples,
                                      const BvllmForwardOptions& options) const {
  BVLLM_REQUIRE(!samples.empty(), "B-VLLM: the batch is empty");
  const BvllmModel& m = *bvllm_;
  const int64_t hidden = m.config().hidden_size;
  const Device device = m.embed_tokens->weight().device();
  const DType dtype = m.embed_tokens->weight().dtype();
  BvllmOutput out;
  std::vector<Tensor> rows, label_rows;
  bool all_labelled = true;
  for (size_t s = 0; s < samples.size(); ++s) {
    BvllmInput input = input_embeds(samples[s], options, s);
    all_labelled = all_labelled && input.labels.defined();
    rows.push_back(std::move(input.embeds));
    label_rows.push_back(std::move(input.labels));
    out.lengths.push_back(rows.back().size(0));
    out.visual.push_back(std::move(input.visual));
  }

  // Right padding (zeros, as LLaVA's prepare_inputs_labels_for_multimodal): with causal
  // attention nothing at a real position sees it, and its labels are -100.
  int64_t longest = 0;
  for (int64_t l : out.lengths) longest = std::max(longest, l);
  std::vector<Tensor> padded, padded_labels;
  for (size_t s = 0; s < rows.size(); ++s) {
    const int64_t pad = longest - out.lengths[s];
    Tensor row = rows[s];
    if (pad > 0) row = ops::concat({row, ops::zeros({pad, hidden}, dtype, device)}, 0);
    padded.push_back(row);
    if (all_labelled) {
      Tensor l = label_rows[s];
      if (pad > 0) l = ops::concat({l, ops::full({pad}, kIgnoreIndex, DType::I64, device)}, 0);
      padded_labels.push_back(l);
    }
  }
  out.logits = forward_embeds(ops::stack(padded, 0));
  if (all_labelled) {
    out.labels = ops::stack(padded_labels, 0);
    out.loss = causal_lm_loss(out.logits, out.labels);
  }
  return out;
}

int64_t BvllmForCausalLM::set_trainable_stage(int stage) {
  BVLLM_REQUIRE(stage == 1 || stage == 2, "B-VLLM: the training stage must be 1 or 2, got ", stage);
  set_requires_grad(false);
  std::vector<std::string> globs;
  if (stage == 1) {  // research/bvllm.md §5.2: frame selection + projector
    globs = {"model.vlm_att_encoder_temporal.*",  "model.vlm_att_query_temporal",
             "model.vlm_att_ln_temporal.*",       "model.vlm_att_projector_temporal.*",
             "model.vlm_att_projector_spatial.*", "model.vlm_att_val_projector_spatial.*"};
  } else {  // §5.3: every vlm_att_* module and the LoRA adapters
    globs = {"model.vlm_att_*", "*.lora_A.*", "*.lora_B.*"};
  }
  for (const std::string& g : globs) unfreeze(NamePattern::glob(g));
  return static_cast<int64_t>(named_trainable_parameters().size());
}

std::vector<ParameterCount> count_parameters(const BvllmForCausalLM& model) {
  const std::vector<std::pair<std::string, std::string>> parts = {
      {"vision tower (EVA ViT)", "model.vision_tower.*"},
      {"temporal Q-Former", "model.vlm_att_encoder_temporal.*"},
      {"spatial Q-Former", "model.vlm_att_encoder_spatial.*"},
      {"queries, layer norms, projectors", "model.vlm_att_*"},
      {"LoRA adapters", "*.lora_[AB].*"},
      {"LLM (Qwen2)", "*"},
  };
  std::vector<ParameterCount> counts;
  for (const auto& [part, glob] : parts) counts.push_back({part, 0});
  for (const auto& [name, tensor] : model.named_parameters()) {
    for (size_t i = 0; i < parts.size(); ++i) {  // the first matching part claims a parameter
      if (NamePattern::glob(parts[i].second).matches(name)) {
        counts[i].parameters += tensor.numel();
        break;
      }
    }
  }
  return counts;
}

}  // namespace bvllm::layers
