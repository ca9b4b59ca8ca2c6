// Qwen2 checkpoints in the Hugging Face layout: a directory with config.json and either
// model.safetensors or model.safetensors.index.json with its shards (research/models-formats.md
// §1.5, §2). Loading converts bf16/f16/f32 tensors to the compute dtype; saving writes a
// directory that transformers' from_pretrained reads back (a tied model without lm_head.weight).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "layers/qwen2.h"
#include "runtime/io/safetensors.h"

namespace bvllm::layers {

struct Qwen2LoadOptions {
  DType dtype = DType::F32;  // the compute dtype of the parameters
  Device device = Device::cpu();
};

// Reads dir/config.json and the weights. Errors name the file and the field or tensor: a missing
// or inconsistent config field, a missing, unexpected or mis-shaped tensor (with the shard it is
// in). A tied model ignores an lm_head.weight in the file (transformers ties it over), and
// rotary_emb.inv_freq buffers of older exports are ignored.
std::shared_ptr<Qwen2ForCausalLM> load_qwen2(const std::string& dir, const Qwen2LoadOptions& options = {});

struct Qwen2SaveOptions {
  std::optional<DType> dtype;  // dtype of the saved tensors; default: the parameters' dtype
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
};

// Writes dir/config.json (torch_dtype = the saved dtype) and the weights, sharded as
// huggingface_hub shards. Refuses a model with unmerged LoRA adapters (merge_lora first): the
// saved file is a plain transformers checkpoint.
void save_qwen2(const Qwen2ForCausalLM& model, const std::string& dir, const Qwen2SaveOptions& options = {});

}  // namespace bvllm::layers
