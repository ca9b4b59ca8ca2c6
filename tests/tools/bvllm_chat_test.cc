// bvllm_chat end to end on tiny random checkpoints with a tiny byte-level tokenizer.json (the
// Qwen2 pipeline over printable ASCII, no merges).
//   --llm (a Qwen2 directory): --logits-out holds the logits that the library computes for the
//     chat-templated prompt, and --greedy prints what generate() produces.
//   --model (a B-VLLM checkpoint in bvllm_train's layout) with --video or --image: the logits and
//     the greedy answer are those of the whole model's forward() over the ChatML prompt that
//     render_chatml gives, with the file's frames; --interactive answers each stdin line as the
//     next turn of one conversation, as a greedy loop that recomputes the whole conversation (the
//     visual tokens selected for the first question) at every token would.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/chat_template.h"
#include "data/conversation.h"
#include "data/qwen2_tokenizer.h"
#include "layers/generate.h"
#include "layers/qwen2_checkpoint.h"
#include "parallel/checkpoint.h"
#include "recipes/recipe.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tools/train/inference.h"
#include "tools/train/model_builder.h"

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

// --- a B-VLLM checkpoint ---------------------------------------------------------------------------

const std::vector<std::string> kBertWords = {"[PAD]", "[UNK]",  "[CLS]", "[SEP]", "[MASK]", "?",
                                             "what",  "colour", "is",    "the",   "object", "which",
                                             "way",   "does",   "it",    "move",  "and",    "now"};

// A tiny random B-VLLM saved as bvllm_train saves it (model tensors, the resolved recipe), a video
// and an image made with the ffmpeg command line.
class BvllmChatModel : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kChat)) << kChat << " is not built";
    if (std::system("ffmpeg -version >/dev/null 2>&1") != 0) GTEST_SKIP() << "the ffmpeg command line is not installed";
    dir_ = fs::temp_directory_path() / ("bvllm_chat_model_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "tokenizer.json") << tiny_tokenizer_json();
    {
      std::ofstream vocab(dir_ / "vocab.txt");
      for (const std::string& w : kBertWords) vocab << w << "\n";
    }
    const std::string ff = "ffmpeg -nostdin -v error -y -f lavfi -i ";
    for (const std::string& command :
         {ff + "testsrc2=size=64x48:rate=8:duration=6 -c:v mpeg4 -q:v 3 " + (dir_ / "clip.mp4").string(),
          ff + "testsrc=size=40x56 -frames:v 1 " + (dir_ / "picture.png").string()}) {
      ASSERT_EQ(std::system(command.c_str()), 0) << command;
    }
    save_model(2, "run");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Random weights (spread out, so that greedy choices are clear) in RUN/checkpoints/step-00000000.
  void save_model(int stage, const std::string& run) {
    std::ostringstream r;
    r << "name: \"chat_test\"\n"
      << "model {\n"
      << "  llm { vocab_size: 99 hidden_size: 32 intermediate_size: 48 num_layers: 2 num_heads: 4 num_kv_heads: 2 "
         "tie_word_embeddings: false }\n"
      << "  tokenizer: \"" << (dir_ / "tokenizer.json").string() << "\"\n"
      << "  vision { image_size: 32 patch_size: 8 width: 24 depth: 1 num_heads: 4 }\n"
      << "  qformer { hidden_size: 32 num_layers: 2 num_heads: 4 intermediate_size: 48 cross_attention_freq: 1 "
         "bert_vocab: \""
      << (dir_ / "vocab.txt").string() << "\" }\n"
      << "  temporal_queries: 3 spatial_queries: 4 frames_per_sample: 5 chronological_order: true\n"
      << "}\n"
      << "trainable { unfreeze: \"model.vlm_att_*\" }\n"
      << "lora { rank: 2 alpha: 4 target_regex: \"(q|v)_proj$\" }\n"
      << "data { shards: \"unused\" stage: " << stage << " image_pad: " << (stage == 2 ? "true" : "false") << " }\n"
      << "seed: 5\n"
      << "steps: 1\n";
    const recipes::Recipe recipe = recipes::parse_recipe(r.str(), "chat test recipe");
    const train::Tokenizers tokenizers = train::load_tokenizers(recipe, "chat test recipe");
    train::BuiltModel built = train::build_model(recipe, "chat test recipe", tokenizers.bert.vocab_size());
    Generator gen{11, 0, 0};
    built.model->reset_parameters(gen, 0.3);
    parallel::Checkpoint c;
    c.tensors["model"] = built.model->named_parameters();
    c.texts["recipe.pb"] = recipes::recipe_to_text(recipe);
    parallel::save_checkpoint((dir_ / run / "checkpoints").string(), c);
  }

  // Runs bvllm_chat with `args` (and `stdin_text` on its stdin); exit status, stdout in `out`.
  int chat(const std::string& args, std::string* out, const std::string& stdin_text = "") {
    std::ofstream(dir_ / "stdin.txt") << stdin_text;
    const fs::path stdout_file = dir_ / "stdout.txt";
    const std::string command =
        kChat + " --threads=1 " + args + " < " + (dir_ / "stdin.txt").string() + " > " + stdout_file.string() + " 2>&1";
    const int status = std::system(command.c_str());
    std::ifstream in(stdout_file);
    *out = {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    return status;
  }

  fs::path dir_;
};

// What bvllm_chat should say, computed the slow way: for each turn, the whole conversation so far
// rendered by render_chatml (the answers as the text their tokens decode to), tokenized with the
// placeholder, and a greedy loop that runs forward() over all of it for every new token. The
// Q-Formers see the first question in every turn.
struct Reference {
  std::string stdout_text;
  Tensor first_logits;  // [positions, vocab] of the first prompt
};

Reference reference_chat(const train::LoadedModel& m, const Tensor& pixels, const std::vector<std::string>& questions,
                         train::MediaKind kind, int64_t max_new_tokens) {
  const Qwen2Tokenizer& tokenizer = m.tokenizers.qwen;
  const std::string tag(train::media_tag(kind));
  const std::vector<int64_t> eos = train::end_token_ids(tokenizer);
  layers::BvllmSample sample;
  sample.pixels = pixels;
  const std::vector<int32_t> bert = m.tokenizers.bert.encode(questions[0]);
  sample.bert_ids = Tensor::from<int64_t>(std::vector<int64_t>(bert.begin(), bert.end()));
  NoGradGuard no_grad;
  Reference ref;
  std::vector<ChatMessage> messages;
  for (size_t turn = 0; turn < questions.size(); ++turn) {
    messages.push_back({"user", turn == 0 ? tag + "\n" + questions[0] : questions[turn]});
    std::vector<int64_t> ids =
        data::encode_multimodal(tokenizer, render_chatml(messages, true), tag, train::media_placeholder(kind));
    std::vector<int32_t> answer;
    for (int64_t step = 0; step < max_new_tokens; ++step) {
      sample.ids = Tensor::from<int64_t>(ids);
      const layers::BvllmOutput out = m.model->forward({sample}, {.noise_free = true});
      const int64_t length = out.lengths[0];
      if (turn == 0 && step == 0) ref.first_logits = out.logits.select(0, 0);
      const std::vector<float> last = out.logits.select(0, 0).select(0, length - 1).to_vector<float>();
      const int64_t token = std::max_element(last.begin(), last.end()) - last.begin();
      if (std::find(eos.begin(), eos.end(), token) != eos.end()) break;
      answer.push_back(static_cast<int32_t>(token));
      ids.push_back(token);
    }
    ref.stdout_text += tokenizer.decode(answer, /*skip_special_tokens=*/true) + "\n";
    messages.push_back({"assistant", tokenizer.decode(answer)});
  }
  return ref;
}

TEST_F(BvllmChatModel, AnswersAboutAVideoAsTheWholeModelDoes) {
  const std::string q = "What colour is the object?";
  const std::string logits_file = (dir_ / "logits.safetensors").string();
  std::string out;
  ASSERT_EQ(chat("--model=" + (dir_ / "run").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=48 --greedy --max_new_tokens=6 --prompt='" + q + "' --logits_out=" + logits_file,
                 &out),
            0)
      << out;
  const train::LoadedModel m = train::load_trained_model((dir_ / "run").string());
  const Tensor pixels =
      train::video_pixels((dir_ / "clip.mp4").string(), train::media_options(m.recipe, {.frame_size = 48}));
  ASSERT_EQ(pixels.shape(), (Shape{5, 3, 32, 32}));
  const Reference ref = reference_chat(m, pixels, {q}, train::MediaKind::Video, 6);
  EXPECT_EQ(out, ref.stdout_text);
  ASSERT_GT(ref.stdout_text.size(), 1u);  // the random model says something
  SafetensorsFile file = SafetensorsFile::open(logits_file);
  EXPECT_EQ(file.tensor("logits").shape(), ref.first_logits.shape());
  // The program runs on one thread, this test on several: summation orders differ.
  EXPECT_LT(testing::rel_error(file.tensor("logits"), ref.first_logits), 1e-5);
  // Another frame size is another input (so the flag matters and the check above is not vacuous).
  std::string other;
  ASSERT_EQ(chat("--model=" + (dir_ / "run").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=40 --greedy --max_new_tokens=0 --prompt='" + q + "' --logits_out=" + logits_file,
                 &other),
            0)
      << other;
  EXPECT_GT(testing::rel_error(SafetensorsFile::open(logits_file).tensor("logits"), ref.first_logits), 1e-3);
}

TEST_F(BvllmChatModel, InteractiveTurnsContinueTheConversation) {
  const std::vector<std::string> questions = {"What colour is the object?", "Which way does it move?", "And now?"};
  std::string out;
  ASSERT_EQ(chat("--model=" + (dir_ / "run" / "checkpoints").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=48 --greedy --max_new_tokens=5 --interactive --prompt='" + questions[0] + "'",
                 &out, questions[1] + "\n\n" + questions[2] + "\n"),  // the blank line is skipped
            0)
      << out;
  const train::LoadedModel m = train::load_trained_model((dir_ / "run").string());
  const Tensor pixels =
      train::video_pixels((dir_ / "clip.mp4").string(), train::media_options(m.recipe, {.frame_size = 48}));
  EXPECT_EQ(out, reference_chat(m, pixels, questions, train::MediaKind::Video, 5).stdout_text);
  // Without --prompt the first question is stdin's first line.
  std::string again;
  ASSERT_EQ(chat("--model=" + (dir_ / "run").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=48 --greedy --max_new_tokens=5 --interactive",
                 &again, questions[0] + "\n" + questions[1] + "\n" + questions[2]),
            0)
      << again;
  EXPECT_EQ(again, out);
}

TEST_F(BvllmChatModel, AnswersAboutAnImage) {
  const std::string q = "What is the object?";
  std::string out;
  ASSERT_EQ(chat("--model=" + (dir_ / "run").string() + " --image=" + (dir_ / "picture.png").string() +
                     " --greedy --max_new_tokens=6 --prompt='" + q + "'",
                 &out),
            0)
      << out;
  const train::LoadedModel m = train::load_trained_model((dir_ / "run").string());
  const Tensor pixels = train::image_pixels((dir_ / "picture.png").string(), train::media_options(m.recipe));
  ASSERT_EQ(pixels.shape(), (Shape{1, 3, 32, 32}));
  EXPECT_EQ(out, reference_chat(m, pixels, {q}, train::MediaKind::Image, 6).stdout_text);
}

TEST_F(BvllmChatModel, ErrorsAreOneLine) {
  const std::string model = " --model=" + (dir_ / "run").string();
  std::string out;
  EXPECT_NE(chat(model + " --prompt=x", &out), 0);
  EXPECT_EQ(out, "bvllm_chat: --model needs exactly one of --video and --image\n");
  EXPECT_NE(chat(model + " --llm=" + dir_.string() + " --prompt=x", &out), 0);
  EXPECT_EQ(out,
            "bvllm_chat: give one of --llm (a Hugging Face Qwen2 directory) and --model (a B-VLLM bvllm_train "
            "checkpoint)\n");
  EXPECT_NE(chat(model + " --video=" + (dir_ / "clip.mp4").string(), &out), 0);
  EXPECT_EQ(out, "bvllm_chat: --prompt is required (or --interactive, to read the questions from stdin)\n");
  EXPECT_NE(chat(model + " --video=" + (dir_ / "missing.mp4").string() + " --prompt=x", &out), 0);
  EXPECT_NE(out.find((dir_ / "missing.mp4").string()), std::string::npos) << out;
  EXPECT_NE(chat("--llm=" + dir_.string() + " --video=x --prompt=x", &out), 0);
  EXPECT_EQ(out, "bvllm_chat: --video, --image and --interactive are for --model (a B-VLLM checkpoint)\n");
  // A stage-1 model has no chat format for further turns.
  save_model(1, "stage1");
  EXPECT_NE(chat("--model=" + (dir_ / "stage1").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=48 --interactive",
                 &out),
            0);
  EXPECT_NE(out.find("--interactive needs a stage-2 checkpoint"), std::string::npos) << out;
  EXPECT_EQ(chat("--model=" + (dir_ / "stage1").string() + " --video=" + (dir_ / "clip.mp4").string() +
                     " --frame_size=48 --greedy --max_new_tokens=3 --prompt='Describe the video.'",
                 &out),
            0)
      << out;
}

}  // namespace
}  // namespace bvllm
