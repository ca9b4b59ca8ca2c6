// B-VLLM: a video LLM with balanced spatio-temporal tokens (Lu et al., arXiv:2412.09919), as the
// released code computes it (../shared/research/bvllm.md §1-§2).
//
// Per sample with frames (T >= 1; an image is T = 1):
//   V   = EVA(frames)                                   [T, 1 + P, Cv]   frozen, no autograd
//   H_t = QF_t(query_temporal[:L*], text, enc = f(V))   [L*, Cq]         f: [CLS] per frame
//   W   = softmax((H_t-projected scores + Gumbel) / tau) [L*, T]          layers/frame_selection.h
//   F   = W @ LN_t(V[:, 1:])                            [L*, P, Cv]
//   F'  = temporal merge of F by the rows of W          [K', P, Cv]      layers/temporal_merge.h
//   H_s = QF_s(query_spatial, text, enc = F'_k)         [K', Q, Cq]      per kept frame
//   H_s = token budget merge (no-op unless K' > budget / Q)              layers/token_merge.h
//   Z   = val_projector(projector(H_s))                 [K' Q, hidden]   two Linears, no activation
// and Z replaces the sample's one <video> (-201) or <image> (-200) placeholder in the LLM's input
// embeddings; its labels are -100. Text-only samples have no placeholder and no visual tokens.
// Samples are right-padded into one batch: with causal attention, padding at the end changes no
// real position, and one causal-LM loss is the mean over every supervised token of the batch.
//
// Parameter names are those of a B-VLLM checkpoint (model.vision_tower.vision_tower.*,
// model.vlm_att_encoder_{temporal,spatial}.bert.*, model.vlm_att_query_*, model.vlm_att_ln_*,
// model.vlm_att_projector_*, model.vlm_att_val_projector_spatial.*, Qwen2's model.layers.*).
// vlm_att_ln_spatial exists (checkpoints carry it) but, as released, only LN_t is applied.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layers/eva_vit.h"
#include "layers/frame_selection.h"
#include "layers/layer_norm.h"
#include "layers/linear.h"
#include "layers/qformer.h"
#include "layers/qwen2.h"
#include "runtime/rng.h"

namespace bvllm::layers {

// Placeholder ids in the LLM's input ids (VideoLLaMA2's constants.py).
inline constexpr int64_t kImageTokenId = -200;
inline constexpr int64_t kVideoTokenId = -201;
inline constexpr int64_t kIgnoreIndex = -100;

struct BvllmConfig {
  EvaVitConfig vision;
  QFormerConfig qformer;  // both Q-Formers
  Qwen2Config llm;
  int64_t num_query_tokens = 32;  // rows of vlm_att_query_{temporal,spatial} (InstructBLIP's 32)
  int64_t temporal_queries = 16;  // L*: frames selected (released code 16, the paper 32)
  int64_t spatial_queries = 32;   // tokens per kept frame (the first of the spatial query tokens)
  double gumbel_tau = 0.5;
  double merge_threshold = 0.75;  // on (cos + 1) / 2 of the selection rows
  int64_t token_budget = 576;     // visual tokens per video; 0 disables the spatial merge
  double vision_ln_eps = 1e-5;    // vlm_att_ln_*: nn.LayerNorm default (§12.1)
  SelectionFeature selection_feature = SelectionFeature::Cls;
  bool chronological_order = false;  // sort the selected frames by expected frame index

  // EVA ViT-g/14 at 336 px, two BERT-base Q-Formers, Qwen2-7B-Instruct (research/bvllm.md §3).
  static BvllmConfig paper();
  // Throws bvllm::Error naming `origin` and the field when sizes disagree.
  void validate(const std::string& origin = "BvllmConfig") const;
};

// One training or inference sample, unpadded.
struct BvllmSample {
  Tensor ids;     // i64 [L]: text ids with at most one kVideoTokenId / kImageTokenId
  Tensor labels;  // i64 [L], -100 where not supervised; may be undefined (no loss)
  // Frames for the placeholder: pixels [T, 3, S, S] (CLIP-normalized) or, instead, precomputed
  // EVA outputs vision [T, 1 + P, Cv] (e.g. cached 1-fps features).
  Tensor pixels, vision;
  Tensor bert_ids, bert_mask;  // i64 [Lb]: the question for both Q-Formers ([CLS] ... [SEP])
  Tensor gumbel_noise;         // optional [L*, T]: fixed noise instead of the generator's
};

struct BvllmForwardOptions {
  // Where Gumbel noise comes from when a sample carries none; null: noise-free selection.
  Generator* generator = nullptr;
  bool noise_free = false;  // softmax(S / tau): deterministic selection at inference
};

// What the visual path decided for one sample (for logs, tests and analysis).
struct VisualSelection {
  Tensor weights;             // [L*, T] selection weights (detached)
  std::vector<int64_t> kept;  // rows of the weights that survived the temporal merge
  int64_t tokens = 0;         // visual tokens spliced into the LLM input
};

struct BvllmOutput {
  Tensor logits;                        // [B, Lmax, vocab]; rows past lengths[b] are padding
  Tensor labels;                        // [B, Lmax] i64, -100 on visual tokens and padding
  Tensor loss;                          // 0-d f32 when every sample has labels, else undefined
  std::vector<int64_t> lengths;         // per sample, after splicing
  std::vector<VisualSelection> visual;  // per sample (empty kept for text-only samples)
};

class VisionTower : public Module {  // LAVIS wrapper: model.vision_tower.vision_tower.*
 public:
  VisionTower(const EvaVitConfig& config, DType dtype);
  std::shared_ptr<EvaVisionTransformer> vision_tower;
};

class BvllmModel : public Qwen2Model {
 public:
  BvllmModel(const BvllmConfig& config, DType dtype = DType::F32);

  // The visual tokens Z [tokens, hidden] for one sample with frames.
  Tensor visual_tokens(const BvllmSample& sample, const BvllmForwardOptions& options, VisualSelection* selection) const;

  const BvllmConfig& bvllm_config() const { return bvllm_config_; }
  // Module::reset_parameters for the children, and the query tokens normal(0, std) as BLIP-2.
  void reset_parameters(Generator& gen, double std) override;

  std::shared_ptr<VisionTower> vision_tower;
  std::shared_ptr<QFormer> vlm_att_encoder_temporal, vlm_att_encoder_spatial;
  std::shared_ptr<LayerNorm> vlm_att_ln_temporal, vlm_att_ln_spatial;
  std::shared_ptr<Linear> vlm_att_projector_temporal, vlm_att_projector_spatial, vlm_att_val_projector_spatial;
  Tensor vlm_att_query_temporal, vlm_att_query_spatial;  // [1, num_query_tokens, Cq]

 private:
  BvllmConfig bvllm_config_;
};

// One sample's LLM input with its visual tokens spliced in (what forward() stacks into a batch).
struct BvllmInput {
  Tensor embeds;             // [L', hidden]: text embeddings with Z in place of the placeholder
  Tensor labels;             // [L'] i64, -100 on the visual tokens; undefined when the sample has none
  VisualSelection visual;    // empty kept for a text-only sample
  int64_t visual_start = 0;  // position of the first visual token (the placeholder's), 0 when none
};

class BvllmForCausalLM : public Qwen2ForCausalLM {
 public:
  BvllmForCausalLM(const BvllmConfig& config, DType dtype = DType::F32);

  BvllmOutput forward(const std::vector<BvllmSample>& samples, const BvllmForwardOptions& options = {}) const;

  // The input embeddings of one sample, visual tokens spliced in: forward_embeds of embeds[None]
  // gives the logits forward() gives for the sample alone. Inference starts generation from it
  // (layers/generate.h generate_from_embeds), so the visual tokens are computed once per video.
  // `index` names the sample in errors.
  BvllmInput input_embeds(const BvllmSample& sample, const BvllmForwardOptions& options = {}, size_t index = 0) const;

  BvllmModel& bvllm() const { return *bvllm_; }
  const BvllmConfig& bvllm_config() const { return bvllm_->bvllm_config(); }

  // B-VLLM's trainable sets (research/bvllm.md §5.2-5.3): everything frozen, then
  //   stage 1: the temporal Q-Former, its queries, LN_t, the three projectors;
  //   stage 2: every vlm_att_* module and every LoRA adapter.
  // Returns the number of trainable tensors.
  int64_t set_trainable_stage(int stage);

 private:
  BvllmForCausalLM(std::shared_ptr<BvllmModel> model, DType dtype);
  std::shared_ptr<BvllmModel> bvllm_;
};

// Parameter counts of a model's top-level parts, for reports and docs.
struct ParameterCount {
  std::string part;
  int64_t parameters = 0;
};
std::vector<ParameterCount> count_parameters(const BvllmForCausalLM& model);

}  // namespace bvllm::layers
