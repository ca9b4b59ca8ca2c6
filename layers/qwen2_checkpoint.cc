#include "layers/qwen2_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <sstream>

namespace bvllm::layers {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// tensor name -> the file holding it, for errors (load_safetensors_dir has validated the index).
std::map<std::string, std::string> tensor_files(const std::string& dir) {
  std::map<std::string, std::string> files;
  const fs::path single = fs::path(dir) / kSingleFile;
  if (fs::exists(single)) return files;  // everything is in model.safetensors
  std::ifstream in(fs::path(dir) / kIndexFile, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json index = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) return files;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (file.is_string()) files[name] = (fs::path(dir) / file.get<std::string>()).string();
  }
  return files;
}

}  // namespace

std::shared_ptr<Qwen2ForCausalLM> load_qwen2(const std::string& dir, const Qwen2LoadOptions& options) {
  BVLLM_REQUIRE(fs::is_directory(dir), dir, ": not a directory (expected a Hugging Face model directory)");
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  BVLLM_REQUIRE(fs::exists(config_path), dir, ": no ", kConfigFile);
  Qwen2Config config = Qwen2Config::from_file(config_path);

  std::map<std::string, Tensor> tensors = load_safetensors_dir(dir);
  std::erase_if(tensors, [&](const auto& item) {
    const std::string& name = item.first;
    return name.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight");
  });
  const std::map<std::string, std::string> files = tensor_files(dir);
  const bool single = files.empty();
  const std::string source = single ? (fs::path(dir) / kSingleFile).string() : (fs::path(dir) / kIndexFile).string();

  auto model = std::make_shared<Qwen2ForCausalLM>(config, options.dtype);
  StateLoadOptions load;
  load.source = source;
  load.origin = [&](const std::string& name) {
    auto it = files.find(name);
    return it != files.end() ? it->second : source;
  };
  load.copy = false;  // the mapping is ours alone: parameters may stay on it when no conversion is needed
  model->load_state_dict(tensors, load);
  model->to(options.device);
  return model;
}

void save_qwen2(const Qwen2ForCausalLM& model, const std::string& dir, const Qwen2SaveOptions& options) {
  NamedTensors tensors = model.state_dict();
  BVLLM_REQUIRE(!tensors.empty(), "save_qwen2: the model has no parameters");
  for (const auto& [name, t] : tensors) {
    BVLLM_REQUIRE(name.find(".lora_A.") == std::string::npos && name.find(".lora_B.") == std::string::npos,
                  "save_qwen2: ", name, " is a LoRA adapter; merge_lora() before saving a transformers checkpoint");
  }
  const DType dtype = options.dtype.value_or(tensors.front().second.dtype());
  BVLLM_REQUIRE(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
                "save_qwen2: checkpoints are saved as f32, bf16 or f16, not ", dtype_name(dtype));
  for (auto& [name, t] : tensors) t = t.detach().to(dtype);

  std::error_code ec;
  fs::create_directories(dir, ec);
  BVLLM_REQUIRE(!ec, dir, ": cannot create directory: ", ec.message());
  save_sharded_safetensors(dir, tensors, options.max_shard_bytes);

  // config.json last, through a temporary file, so a directory with a config has its weights.
  const fs::path path = fs::path(dir) / kConfigFile;
  const fs::path tmp = fs::path(dir) / (std::string(kConfigFile) + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << model.config().to_json(dtype);
    out.close();
    BVLLM_REQUIRE(out, tmp.string(), ": cannot write");
  }
  fs::rename(tmp, path, ec);
  BVLLM_REQUIRE(!ec, path.string(), ": cannot rename from ", tmp.string(), ": ", ec.message());
}

}  // namespace bvllm::layers
