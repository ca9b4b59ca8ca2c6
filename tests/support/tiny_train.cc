#include "tests/support/tiny_train.h"

#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "data/sample.pb.h"
#include "data/shard.h"
#include "data/tiny_vocab.h"
#include "parallel/checkpoint.h"
#include "recipes/recipe.h"
#include "tests/support/moving_squares.h"

namespace bvllm::testing {

namespace fs = std::filesystem;

void write_tiny_train_data(const fs::path& root) {
  fs::remove_all(root);
  for (int stage : {1, 2}) {
    data::ShardWriter writer((root / ("shards" + std::to_string(stage))).string());
    for (int i = 0; i < kTinyTrainSamples; ++i) writer.add(testing::square_sample(i, stage));
    writer.finish();
  }
  // The vocabularies of this data's texts (and ChatML's system prompt), as bvllm_synth makes them.
  std::vector<std::string> texts = {"You are a helpful assistant.", "system", "user", "assistant"};
  for (int stage : {1, 2})
    for (int i = 0; i < kTinyTrainSamples; ++i) {
      const data::Sample sample = testing::square_sample(i, stage);
      for (const data::Turn& t : sample.conversations()) texts.push_back(t.value());
    }
  data::write_tiny_tokenizer((root / "tokenizer.json").string(), texts);
  data::write_tiny_bert_vocab((root / "bert_vocab.txt").string(), texts);
}

std::string tiny_recipe_text(const fs::path& root, int stage, const std::vector<std::string>& overrides) {
  std::ostringstream r;
  r << "name: \"tiny_test_stage" << stage << "\"\n"
    << "model {\n"
    << "  llm { vocab_size: 384 hidden_size: 32 intermediate_size: 64 num_layers: 2 num_heads: 4 num_kv_heads: 2 "
       "tie_word_embeddings: true }\n"
    << "  tokenizer: \"" << (root / "tokenizer.json").string() << "\"\n"
    << "  vision { image_size: 32 patch_size: 8 width: 24 depth: 1 num_heads: 4 }\n"
    << "  qformer { hidden_size: 32 num_layers: 2 num_heads: 4 intermediate_size: 48 cross_attention_freq: 1 "
       "bert_vocab: \""
    << (root / "bert_vocab.txt").string() << "\" }\n"
    << "  temporal_queries: 2 spatial_queries: 3 frames_per_sample: 4 chronological_order: true\n"
    << "}\n";
  if (stage == 1) {
    r << "trainable { unfreeze: \"model.vlm_att_encoder_temporal.*\" unfreeze: \"model.vlm_att_query_temporal\" "
         "unfreeze: \"model.vlm_att_projector_*\" unfreeze: \"model.vlm_att_val_projector_spatial.*\" "
         "unfreeze: \"model.layers.*\" }\n";
  } else {
    r << "trainable { unfreeze: \"model.vlm_att_*\" }\n"
      << "lora { rank: 4 alpha: 8 dropout: 0.1 target_regex: \"(q|v|up)_proj$\" }\n";
  }
  r << "optimizer { lr: 3e-3 weight_decay: 0.01 }\n"
    << "schedule { kind: COSINE warmup_steps: 2 }\n"
    << "batch { micro_batch: 2 grad_accum: 2 global_batch: 4 }\n"
    << "precision { compute: F32 }\n"
    << "data { shards: \"" << (root / ("shards" + std::to_string(stage))).string() << "\" stage: " << stage
    << " max_length: 256 image_pad: " << (stage == 2 ? "true" : "false") << " }\n"
    << "checkpoint { every_steps: 5 }\n"
    << "logging { every_steps: 5 }\n"
    << "seed: 7\n"
    << "steps: 20\n";
  return recipes::recipe_to_text(recipes::parse_recipe(r.str(), "trainer_test recipe", overrides));
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

std::map<std::string, Tensor> checkpoint_model(const std::string& checkpoint) {
  const parallel::Checkpoint c = parallel::load_checkpoint(checkpoint);
  const NamedTensors& t = c.tensors.at("model");
  return {t.begin(), t.end()};
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), static_cast<size_t>(ca.numel()) * dtype_size(ca.dtype())) == 0;
}

std::string program_path(const std::string& name) { return std::string(BVLLM_BINARY_DIR) + "/bin/" + name; }

int run_command(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace bvllm::testing
