// bvllm_chat end to end on a tiny random checkpoint with a tiny byte-level tokenizer.json (the
// Qwen2 pipeline over printable ASCII, no merges): --logits-out holds the logits that the library
// computes for the chat-templated prompt, and --greedy prints what generate() produces.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "data/chat_template.h"
#include "data/qwen2_tokenizer.h"
#include "layers/generate.h"
#include "layers/qwen2_checkpoint.h"
#include "runtime/autograd.h"
#include "tests/support/fixtures.h"

namespace bvllm {
namespace {

namespace fs = std::filesystem;

const std::string kChat = std::string(BVLLM_BINARY_DIR) + "/bin/bvllm_chat";

// Printable ASCII as themselves, space as Ġ and newline as Ċ (the byte-level alphabet): ids
// 0..95; then <|endoftext|> 96, <|im_start|> 97, <|im_end|> 98.
std::string tiny_tokenizer_json() {
  std::string vocab;
  int id = 0;
  auto add = [&](const std::string& token) {
    if (id > 0) vocab += ", ";
    vocab += "\"" + token + "\": " + std::to_string(id);
    ++id;
  };
  for (char c = '!'; c <= '~'; ++c) add(c == '"' ? "\\\"" : c == '\\' ? "\\\\" : std::string(1, c));
  add("\u0120");
  add("\u010A");
  auto added = [](int tid, const std::string& content) {
    return "{\"id\": " + std::to_string(tid) + ", \"content\": \"" + content +
           "\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
           "\"special\": true}";
  };
  const std::string byte_level =
      R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})";
  return R"({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [)" + added(96, "<|endoftext|>") +
         ", " + added(97, "<|im_start|>") + ", " + added(98, "<|im_end|>") +
         R"(], "normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false}, )" +
         byte_level + R"(]}, "post_processor": )" + byte_level + R"(, "decoder": )" + byte_level +
         R"(, "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {)" +
         vocab + R"(}, "merges": []}})";
}

class BvllmChat : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kChat)) << kChat << " is not built";
    dir_ = fs::temp_directory_path() / ("bvllm_chat_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const layers::Qwen2Config config{.vocab_size = 100,
                                     .hidden_size = 32,
                                     .intermediate_size = 48,
                                     .num_hidden_layers = 2,
                                     .num_attention_heads = 4,
                                     .num_key_value_heads = 2,
                                     .head_dim = 8,
                                     .rope_theta = 1e6,
                                     .tie_word_embeddings = true,
                                     .eos_token_ids = {96}};
    model_ = std::make_shared<layers::Qwen2ForCausalLM>(config);
    Generator gen{17, 0, 0};
    model_->reset_parameters(gen, 0.3);  // spread logits: greedy choices are clear
    layers::save_qwen2(*model_, dir_.string());
    std::ofstream(dir_ / "tokenizer.json") << tiny_tokenizer_json();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs bvllm_chat with `args`; returns its exit status, stdout in `out`.
  int chat(const std::string& args, std::string* out) {
    const fs::path stdout_file = dir_ / "stdout.txt";
    const std::string command =
        kChat + " --llm=" + dir_.string() + " --threads=1 " + args + " > " + stdout_file.string() + " 2>&1";
    const int status = std::system(command.c_str());
    std::ifstream in(stdout_file);
    *out = {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    return status;
  }

  fs::path dir_;
  std::shared_ptr<layers::Qwen2ForCausalLM> model_;
};

TEST_F(BvllmChat, LogitsOutHoldsTheLogitsOfTheTemplatedPrompt) {
  std::string out;
  const std::string logits_file = (dir_ / "logits.safetensors").string();
  ASSERT_EQ(chat("--prompt='Hello there' --max-new-tokens=0 --logits-out=" + logits_file, &out), 0) << out;
  const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::load(dir_.string());
  const std::vector<ChatMessage> messages = {{"system", std::string(kQwen2DefaultSystemPrompt)},
                                             {"user", "Hello there"}};
  const std::vector<int32_t> ids = tokenizer.encode(render_chatml(messages, true));
  NoGradGuard no_grad;
  Tensor expected = model_
                        ->forward(Tensor::from<int64_t>(std::vector<int64_t>(ids.begin(), ids.end()),
                                                        {1, static_cast<int64_t>(ids.size())}))
                        .reshape({static_cast<int64_t>(ids.size()), 100});
  SafetensorsFile file = SafetensorsFile::open(logits_file);
  ASSERT_TRUE(file.has("logits"));
  EXPECT_EQ(file.info("logits").dtype, DType::F32);
  EXPECT_EQ(file.tensor("logits").shape(), (Shape{static_cast<int64_t>(ids.size()), 100}));
  EXPECT_EQ(testing::rel_error(file.tensor("logits"), expected), 0.0);
}

TEST_F(BvllmChat, GreedyRawAnswerIsWhatGenerateProduces) {
  std::string out;
  ASSERT_EQ(chat("--prompt='abc' --raw --greedy --max-new-tokens=6", &out), 0) << out;
  const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::load(dir_.string());
  std::vector<int32_t> ids = tokenizer.encode("abc");
  layers::GenerationResult r = layers::generate(*model_, std::vector<int64_t>(ids.begin(), ids.end()),
                                                {.max_new_tokens = 6, .eos_token_ids = {96, 98}});
  ASSERT_GE(r.tokens.size(), 3u);  // the random model says something before any eos
  std::vector<int32_t> tokens(r.tokens.begin(), r.tokens.end());
  EXPECT_EQ(out, tokenizer.decode(tokens, /*skip_special_tokens=*/true) + "\n");
}

TEST_F(BvllmChat, ErrorsAreOneLine) {
  std::string out;
  EXPECT_NE(chat("--prompt=x --dtype=f8", &out), 0);
  EXPECT_EQ(out, "bvllm_chat: --dtype must be f32 or bf16, got 'f8'\n");
  fs::remove(dir_ / "config.json");
  EXPECT_NE(chat("--prompt=x", &out), 0);
  EXPECT_NE(out.find("no config.json"), std::string::npos) << out;
}

}  // namespace
}  // namespace bvllm
