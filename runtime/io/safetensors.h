// Hugging Face safetensors: the reader (mmap, validated as the reference Rust reader validates),
// the writer (byte layout of the reference writer), and sharded checkpoints with
// model.safetensors.index.json. Format facts: ../shared/research/models-formats.md §1.5 and §2.
//
// File layout: u64 little-endian N, then N bytes of a UTF-8 JSON header
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "BF16", "shape": [..], "data_offsets": [B, E]}}
// then the data section; [B, E) is relative to the start of the data section (offset 8 + N).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm {

// "F32", "BF16", ... for the dtypes bvllm has; the reverse gives nullopt for any other string.
std::string_view safetensors_dtype_name(DType dtype);
std::optional<DType> dtype_from_safetensors(std::string_view name);

struct SafetensorsInfo {
  std::string dtype_name;      // as written in the file: "BF16", "F8_E4M3", ...
  std::optional<DType> dtype;  // empty for valid safetensors dtypes that bvllm does not have
  Shape shape;
  uint64_t begin = 0;  // data_offsets, relative to the start of the data section
  uint64_t end = 0;
};

// An open, validated safetensors file. The file is mapped once; tensor() returns CPU tensors that
// view the mapping when their bytes are aligned to the element size (else a copy), and the
// mapping stays alive as long as this object or any such tensor does.
//
// The mapping is private and writable (copy-on-write): writing into a returned tensor never
// changes the file, but two tensor() calls for the same name return views of the same bytes.
class SafetensorsFile {
 public:
  // Maps and validates `path`; throws bvllm::Error naming the file, the tensor or field, and
  // what is wrong.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in the order of their data offsets (ties in header order).
  const std::vector<std::string>& names() const { return names_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const SafetensorsInfo& info(const std::string& name) const;
  // Contiguous CPU tensor; throws for unknown names and dtypes bvllm does not have.
  Tensor tensor(const std::string& name) const;
  // The "__metadata__" map (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Mapping;
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  uint64_t data_start_ = 0;  // 8 + N
  std::vector<std::string> names_;
  std::unordered_map<std::string, SafetensorsInfo> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of one file, by name.
std::map<std::string, Tensor> load_safetensors(const std::string& path);

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes `tensors` (any dtype, device and strides: each is written as a contiguous CPU copy) the
// way the reference writer lays them out: sorted by descending dtype alignment then name,
// "__metadata__" first with "format": "pt" added unless `metadata` sets "format", the header
// padded with spaces to a multiple of 8. Writes path + ".tmp" and renames it over `path`, so an
// existing file is replaced whole or not at all. To store f32 weights as bf16, pass t.to(DType::BF16)
// (round to nearest even, as PyTorch).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The Hugging Face sharded layout (huggingface_hub split_state_dict_into_shards_factory): tensors
// in the given order fill a shard until the next would exceed `max_shard_bytes`; a tensor larger
// than the limit gets a shard of its own. Shards are dir/model-00001-of-0000N.safetensors with
// dir/model.safetensors.index.json ({"metadata": {"total_size": bytes}, "weight_map": {...}});
// a single shard is dir/model.safetensors with no index. Files of an earlier save in `dir` that
// this layout does not use (other shard counts, a stale index or single file) are removed.
constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;
void save_sharded_safetensors(const std::string& dir, const NamedTensors& tensors,
                              uint64_t max_shard_bytes = kDefaultMaxShardBytes,
                              const std::map<std::string, std::string>& metadata = {});

// Reads dir/model.safetensors when present (as transformers does), else every tensor that
// dir/model.safetensors.index.json names, from the shard it names.
std::map<std::string, Tensor> load_safetensors_dir(const std::string& dir);

}  // namespace bvllm
