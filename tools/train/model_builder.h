// A recipe's model: the B-VLLM config its fields describe, the model with its starting weights,
// LoRA and trainable set, and the two tokenizers, as bvllm_train, bvllm_eval and bvllm_chat need
// them.
//
// Starting weights, in order (a later source overwrites an earlier one):
//   1. random init (the modules' reference initializers, from the recipe's seed);
//   2. model.llm_dir's safetensors for every LLM parameter (all must be there);
//   3. model.vision.checkpoint (LAVIS eva_vit_g.pth) and model.qformer.checkpoint (InstructBLIP)
//      when set (layers/bvllm_checkpoint.h);
//   4. checkpoint.init_from: EVERY parameter of the model as a previous stage saved it (stage 2
//      starts from all of stage 1, research/bvllm.md §5.3) — a missing or mis-shaped tensor is an
//      error, not a silent skip;
//   5. LoRA adapters (peft's init) on the LLM's linears whose module name the target regex finds
//      (std::regex_search: "(q|k|v|o|gate|up|down)_proj$" picks every decoder linear).
// Trainable set: everything frozen, then trainable.unfreeze globs, then trainable.freeze globs
// (over full parameter names such as "model.vlm_att_encoder_temporal.bert.encoder.layer.0.*"),
// then every LoRA adapter. A pattern that matches nothing is an error (usually a typo).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/bert_tokenizer.h"
#include "data/loader.h"
#include "data/qwen2_tokenizer.h"
#include "layers/bvllm.h"
#include "recipes/recipe.pb.h"

namespace bvllm::train {

// The B-VLLM sizes a recipe describes. llm_dir recipes read llm_dir/config.json; the Q-Former's
// vocabulary is the BERT tokenizer's (with [DEC]).
layers::BvllmConfig bvllm_config(const recipes::Recipe& recipe, const std::string& source, int64_t bert_vocab_size);

struct Tokenizers {
  Qwen2Tokenizer qwen;
  BertTokenizer bert;
};
// model.tokenizer (or llm_dir/tokenizer.json) and model.qformer.bert_vocab.
Tokenizers load_tokenizers(const recipes::Recipe& recipe, const std::string& source);

// The loader settings a recipe implies for one data-parallel rank (frames, image size, stage
// template, padding, max length, micro-batch, seed).
data::LoaderOptions loader_options(const recipes::Recipe& recipe, int rank = 0, int world = 1);

struct BuildOptions {
  // Skip steps 2-4 (tools that load a checkpoint over the model right after, such as bvllm_eval).
  bool load_weights = true;
  // Build on the meta device: names and shapes only (Trainer checks the recipe's patterns against
  // the model before it allocates anything).
  bool meta = false;
};

struct BuiltModel {
  std::shared_ptr<layers::BvllmForCausalLM> model;
  int64_t lora_modules = 0;            // linears that got an adapter
  std::vector<std::string> trainable;  // names of the trainable parameters, in model order
};

// Builds the model as the header describes. Errors name `source` (the recipe) and the field: a
// LoRA target or trainable pattern that matches nothing, an llm_dir whose tokenizer is larger
// than its vocabulary, an init_from checkpoint that lacks a parameter.
BuiltModel build_model(const recipes::Recipe& recipe, const std::string& source, int64_t bert_vocab_size,
                       const BuildOptions& options = {});

}  // namespace bvllm::train
