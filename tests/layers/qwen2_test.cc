// Qwen2 against PyTorch (tests/reference/make_qwen2_fixtures.py): two tiny Hugging Face
// checkpoints, tied/f32/single file with 2 query heads per kv head, and untied/bf16/sharded with 7;
// logits, one step's gradients, LoRA forward/gradients/merge; load -> save -> load; the errors a
// user sees for a broken config or checkpoint; and the KV cache against full recomputation.
#include "layers/qwen2.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iomanip>
#include <regex>
#include <sstream>

#include "layers/qwen2_checkpoint.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"

namespace bvllm::layers {
namespace {

using testing::error_of;
using testing::sci;

namespace fs = std::filesystem;
using testing::Fixture;
using testing::rel_error;

constexpr double kTolerance = 1e-5;  // f32, relative to the reference's largest magnitude

std::string checkpoint_dir(const std::string& name) {
  return std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/" + name;
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("bvllm_qwen2_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

class Qwen2Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen2Parity, LogitsMatchPyTorch) {
  Fixture f(GetParam());
  auto model = load_qwen2(checkpoint_dir(GetParam()));
  NoGradGuard no_grad;
  Tensor logits = model->forward(f["input_ids"]);
  double err = rel_error(logits, f["logits"]);
  RecordProperty("logits_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);
}

TEST_P(Qwen2Parity, GradientsOfOneStepMatchPyTorch) {
  Fixture f(GetParam());
  auto model = load_qwen2(checkpoint_dir(GetParam()));
  Tensor loss = causal_lm_loss(model->forward(f["input_ids"]), f["labels"]);
  EXPECT_NEAR(loss.item<double>(), f["loss"].item<double>(), kTolerance * f["loss"].item<double>());
  loss.backward();
  double worst = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    double err = rel_error(p.grad(), f["grad." + name]);
    worst = std::max(worst, err);
    EXPECT_LT(err, kTolerance) << name;
  }
  RecordProperty("worst_grad_rel_error", sci(worst));
}

TEST_P(Qwen2Parity, Bf16ComputeStaysCloseToTheF32Reference) {
  // Not a parity claim (PyTorch was not run in bf16): bf16 weights computed in bf16 on the CPU
  // stay within bf16 rounding of the f32 result.
  Fixture f(GetParam());
  auto model = load_qwen2(checkpoint_dir(GetParam()), {.dtype = DType::BF16});
  NoGradGuard no_grad;
  Tensor logits = model->forward(f["input_ids"]);
  EXPECT_EQ(logits.dtype(), DType::BF16);
  double err = rel_error(logits.to(DType::F32), f["logits"]);
  RecordProperty("bf16_logits_rel_error", sci(err));
  EXPECT_LT(err, 5e-2);
}

TEST_P(Qwen2Parity, KvCacheLogitsEqualFullRecomputation) {
  Fixture f(GetParam());
  auto model = load_qwen2(checkpoint_dir(GetParam()));
  NoGradGuard no_grad;
  Tensor ids = f["input_ids"];
  const int64_t l = ids.size(1);
  Tensor full = model->forward(ids);
  // A 5-token prefill, then one token at a time.
  KVCache cache(model->config());
  std::vector<Tensor> parts = {model->forward(ids.narrow(1, 0, 5), {.cache = &cache})};
  for (int64_t t = 5; t < l; ++t) {
    parts.push_back(model->forward(ids.narrow(1, t, 1), {.cache = &cache}));
    EXPECT_EQ(cache.length(), t + 1);
  }
  Tensor cached = ops::concat(parts, 1);
  double err = rel_error(cached, full);
  RecordProperty("kv_cache_rel_error", sci(err));
  EXPECT_LT(err, 1e-6);
  // logits_to_keep gives the last rows of the same computation.
  EXPECT_LT(rel_error(model->forward(ids, {.logits_to_keep = 2}), full.narrow(1, l - 2, 2)), 1e-7);
}

TEST_P(Qwen2Parity, LoadSaveLoadIsBitIdentical) {
  TempDir dir;
  auto model = load_qwen2(checkpoint_dir(GetParam()));
  // Save in the file's dtype (bf16 for the untied checkpoint: f32 widened from bf16 narrows back
  // exactly), sharded small so that the index path is written too.
  const DType file_dtype = model->config().torch_dtype == "bfloat16" ? DType::BF16 : DType::F32;
  save_qwen2(*model, dir.str(), {.dtype = file_dtype, .max_shard_bytes = 30000});
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "config.json"));
  auto original = load_safetensors_dir(checkpoint_dir(GetParam()));
  auto saved = load_safetensors_dir(dir.str());
  EXPECT_EQ(saved.count("lm_head.weight"), model->config().tie_word_embeddings ? 0u : 1u);
  ASSERT_EQ(saved.size(), original.size());
  for (const auto& [name, t] : original) {
    ASSERT_TRUE(saved.count(name)) << name;
    const Tensor& s = saved.at(name);
    ASSERT_EQ(s.dtype(), t.dtype()) << name;
    ASSERT_EQ(s.shape(), t.shape()) << name;
    EXPECT_EQ(std::memcmp(s.raw_data(), t.raw_data(), t.nbytes()), 0) << name;
  }
  auto again = load_qwen2(dir.str());
  EXPECT_EQ(again->config().rope_theta, model->config().rope_theta);
  EXPECT_EQ(again->config().head_dim, model->config().head_dim);
  EXPECT_EQ(again->config().eos_token_ids, model->config().eos_token_ids);
  auto a = model->named_parameters(), b = again->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(std::memcmp(a[i].second.raw_data(), b[i].second.raw_data(), a[i].second.nbytes()), 0) << a[i].first;
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, Qwen2Parity, ::testing::Values("qwen2_tied", "qwen2_untied"));

TEST(Qwen2Checkpoint, ConfigsOfBothTransformersGenerationsParse) {
  auto tied = load_qwen2(checkpoint_dir("qwen2_tied"));
  const Qwen2Config& a = tied->config();
  EXPECT_TRUE(a.tie_word_embeddings);
  EXPECT_EQ(a.rope_theta, 1e6);  // top-level rope_theta
  EXPECT_EQ(a.head_dim, 8);      // hidden / heads
  EXPECT_EQ(a.n_rep(), 2);
  EXPECT_EQ(tied->lm_head, nullptr);
  for (const auto& [name, t] : tied->named_parameters()) EXPECT_NE(name, "lm_head.weight");
  EXPECT_TRUE(tied->lm_head_weight().same(tied->model->embed_tokens->weight()));

  auto untied = load_qwen2(checkpoint_dir("qwen2_untied"));
  const Qwen2Config& b = untied->config();
  EXPECT_FALSE(b.tie_word_embeddings);
  EXPECT_EQ(b.rope_theta, 1e6);  // rope_parameters.rope_theta
  EXPECT_EQ(b.head_dim, 8);      // explicit: 7 heads x 8 != hidden 48
  EXPECT_EQ(b.n_rep(), 7);
  EXPECT_EQ(b.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b.torch_dtype, "bfloat16");
  EXPECT_EQ(untied->model->layers->size(), 2u);
  EXPECT_EQ(untied->lm_head->weight().shape(), (Shape{80, 48}));
}

TEST(Qwen2Checkpoint, ConfigErrorsNameTheFileAndField) {
  const std::string good = read_text(checkpoint_dir("qwen2_tied") + "/config.json");
  auto error_for = [&](const std::function<std::string(std::string)>& edit) {
    return error_of([&] { Qwen2Config::from_json(edit(good), "/x/config.json"); });
  };
  auto drop = [](const std::string& field) {
    return [field](std::string text) { return std::regex_replace(text, std::regex("\"" + field + "\": [^,]*,"), ""); };
  };
  auto set = [](const std::string& field, const std::string& value) {
    return [field, value](std::string text) {
      return std::regex_replace(text, std::regex("\"" + field + "\": [^,]*,"), "\"" + field + "\": " + value + ",");
    };
  };
  EXPECT_EQ(error_for([](std::string t) { return t; }), "(no error)");
  std::string e = error_for(drop("hidden_size"));
  EXPECT_NE(e.find("/x/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'hidden_size' is missing"), std::string::npos) << e;
  e = error_for(set("num_key_value_heads", "3"));
  EXPECT_NE(e.find("num_attention_heads 4 is not a multiple of num_key_value_heads 3"), std::string::npos) << e;
  e = error_for(set("intermediate_size", "\"64\""));
  EXPECT_NE(e.find("'intermediate_size' must be an integer"), std::string::npos) << e;
  e = error_for(set("hidden_act", "\"gelu\""));
  EXPECT_NE(e.find("'hidden_act'"), std::string::npos) << e;
  e = error_for(set("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}"));
  EXPECT_NE(e.find("only default RoPE"), std::string::npos) << e;
  e = error_for(set("model_type", "\"llama\""));
  EXPECT_NE(e.find("'model_type'"), std::string::npos) << e;
  // Missing num_key_value_heads means as many as query heads (transformers' default).
  EXPECT_EQ(Qwen2Config::from_json(drop("num_key_value_heads")(good)).num_key_value_heads, 4);
  // rope_theta in both places must agree.
  e = error_for([](std::string t) {
    return std::regex_replace(t, std::regex("\"rope_scaling\": null,"),
                              "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0},");
  });
  EXPECT_NE(e.find("rope_parameters.rope_theta"), std::string::npos) << e;

  TempDir dir;
  write_text(dir / "config.json", drop("num_hidden_layers")(good));
  fs::copy_file(checkpoint_dir("qwen2_tied") + "/model.safetensors", dir / "model.safetensors");
  e = error_of([&] { load_qwen2(dir.str()); });
  EXPECT_NE(e.find(dir / "config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("num_hidden_layers"), std::string::npos) << e;
}

TEST(Qwen2Checkpoint, TensorErrorsNameTheFileAndTensor) {
  // A copy of the sharded checkpoint where one shard lost a tensor and another has one mis-shaped.
  TempDir dir;
  const std::string source = checkpoint_dir("qwen2_untied");
  for (const auto& entry : fs::directory_iterator(source)) fs::copy_file(entry.path(), dir / entry.path().filename());
  SafetensorsFile shard1 = SafetensorsFile::open(dir / "model-00001-of-00003.safetensors");
  NamedTensors kept;
  std::string dropped;
  for (const auto& name : shard1.names()) {
    if (dropped.empty() && name.find("mlp.up_proj.weight") != std::string::npos) {
      dropped = name;
      continue;
    }
    kept.emplace_back(name, shard1.tensor(name).clone());
  }
  ASSERT_FALSE(dropped.empty());
  save_safetensors(dir / "model-00001-of-00003.safetensors", kept);
  // The index still lists the dropped tensor: load_safetensors_dir names the shard and tensor.
  std::string e = error_of([&] { load_qwen2(dir.str()); });
  EXPECT_NE(e.find("model.safetensors.index.json"), std::string::npos) << e;
  EXPECT_NE(e.find(dropped), std::string::npos) << e;

  // Drop it from the index too: now the model misses it.
  std::string index = read_text(dir / "model.safetensors.index.json");
  index = std::regex_replace(
      index, std::regex("\\s*\"" + std::regex_replace(dropped, std::regex("\\."), "\\.") + "\": \"[^\"]*\","), "");
  write_text(dir / "model.safetensors.index.json", index);
  e = error_of([&] { load_qwen2(dir.str()); });
  EXPECT_NE(e.find("missing tensor '" + dropped + "'"), std::string::npos) << e;

  // A mis-shaped tensor in a single-file checkpoint names the file, both shapes and the tensor.
  TempDir single;
  fs::copy_file(checkpoint_dir("qwen2_tied") + "/config.json", single / "config.json");
  auto tensors = load_safetensors(checkpoint_dir("qwen2_tied") + "/model.safetensors");
  NamedTensors edited;
  for (auto& [name, t] : tensors) {
    edited.emplace_back(name, name == "model.norm.weight" ? ops::ones({31}) : t);
  }
  edited.emplace_back("model.extra.weight", ops::ones({2}));
  save_safetensors(single / "model.safetensors", edited);
  e = error_of([&] { load_qwen2(single.str()); });
  EXPECT_NE(e.find("tensor 'model.norm.weight' in " + (single / "model.safetensors") + " has shape [31]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("expects [32]"), std::string::npos) << e;
  EXPECT_NE(e.find("unexpected tensor 'model.extra.weight'"), std::string::npos) << e;
}

// --- LoRA ----------------------------------------------------------------------------------------

// The tied model with peft-named adapters on q_proj, v_proj and down_proj, weights from the fixture.
std::shared_ptr<Qwen2ForCausalLM> tied_with_lora(const Fixture& f) {
  auto model = load_qwen2(checkpoint_dir("qwen2_tied"));
  Generator gen{1, 0, 0};
  const int64_t n = add_lora(*model, NamePattern::regex(R"(.*\.(q_proj|v_proj|down_proj))"),
                             {.rank = 4, .alpha = 8.0, .dropout = 0.0}, gen);
  EXPECT_EQ(n, 6);
  std::map<std::string, Tensor> adapters;
  for (const auto& [name, t] : model->named_parameters()) {
    if (name.find(".lora_") != std::string::npos) adapters[name] = f["lora." + name];
  }
  EXPECT_EQ(adapters.size(), 12u);
  model->load_state_dict(adapters, {.allow_missing = true, .source = "fixture"});
  return model;
}

TEST(Qwen2Lora, ForwardAndGradientsMatchPeft) {
  Fixture f("qwen2_tied");
  auto model = tied_with_lora(f);
  // Train the adapters only.
  model->set_requires_grad(false);
  EXPECT_EQ(model->unfreeze(NamePattern::glob("*.lora_*")), 12);
  Tensor logits = model->forward(f["input_ids"]);
  double err = rel_error(logits, f["lora.logits"]);
  RecordProperty("lora_logits_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);
  causal_lm_loss(logits, f["labels"]).backward();
  double worst = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    if (name.find(".lora_") == std::string::npos) {
      EXPECT_FALSE(p.grad().defined()) << name;
      continue;
    }
    ASSERT_TRUE(p.grad().defined()) << name;
    worst = std::max(worst, rel_error(p.grad(), f["lora.grad." + name]));
    EXPECT_LT(rel_error(p.grad(), f["lora.grad." + name]), kTolerance) << name;
  }
  RecordProperty("worst_lora_grad_rel_error", sci(worst));
}

TEST(Qwen2Lora, MergeMatchesPeftAndKeepsTheLogits) {
  Fixture f("qwen2_tied");
  auto model = tied_with_lora(f);
  EXPECT_EQ(merge_lora(*model), 6);
  EXPECT_FALSE(has_lora(*model));
  double worst = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    EXPECT_EQ(name.find("lora"), std::string::npos) << name;
    if (f.has("lora.merged." + name)) {
      worst = std::max(worst, rel_error(p, f["lora.merged." + name]));
      EXPECT_LT(rel_error(p, f["lora.merged." + name]), 1e-6) << name;
    }
  }
  RecordProperty("worst_merged_weight_rel_error", sci(worst));
  NoGradGuard no_grad;
  double err = rel_error(model->forward(f["input_ids"]), f["lora.merged_logits"]);
  RecordProperty("merged_logits_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);
  EXPECT_LT(rel_error(model->forward(f["input_ids"]), f["lora.logits"]), kTolerance);
}

TEST(Qwen2Lora, SavingRefusesUnmergedAdapters) {
  Fixture f("qwen2_tied");
  auto model = tied_with_lora(f);
  TempDir dir;
  std::string e = error_of([&] { save_qwen2(*model, dir.str()); });
  EXPECT_NE(e.find("merge_lora"), std::string::npos) << e;
}

}  // namespace
}  // namespace bvllm::layers
