// tools/train/inference.h's inputs against the training side: the frames video_pixels and
// image_pixels make of a file equal, bit for bit, what the training loader gives for the same file
// after the real bvllm_prep stored it (with and without the pad); the prompts equal the loader's
// tokenization of a training sample up to its answer (stage 2 ChatML with its multi-turn
// continuation, and stage 1's plain format); check_answer's teacher-forced verdict on hand-made
// logits.
#include "tools/train/inference.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "data/conversation.h"
#include "data/loader.h"
#include "data/tiny_vocab.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kPrep = std::string(BVLLM_BINARY_DIR) + "/bin/bvllm_prep";

const std::vector<std::string> kTexts = {"<video>\nWhat colour is the object?",
                                         "red",
                                         "Which direction does it move?",
                                         "left",
                                         "<video>\nDescribe the video.",
                                         "a red square moves left.",
                                         "<image>\nWhat shape is it?",
                                         "square",
                                         std::string(kQwen2DefaultSystemPrompt),
                                         "system",
                                         "user",
                                         "assistant"};

data::Sample sample_of(const std::string& id, data::Sample::Kind kind, const std::vector<std::string>& turns) {
  data::Sample s;
  s.set_id(id);
  s.set_kind(kind);
  for (size_t i = 0; i < turns.size(); ++i) {
    data::Turn* t = s.add_conversations();
    t->set_from(i % 2 == 0 ? "human" : "gpt");
    t->set_value(turns[i]);
  }
  return s;
}

std::vector<int64_t> encode(const Qwen2Tokenizer& tokenizer, const std::string& text) {
  const std::vector<int32_t> ids = tokenizer.encode(text);
  return {ids.begin(), ids.end()};
}

// A tokenizer over kTexts (each word one token, other text byte by byte) and the BERT vocab.
class Inference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("bvllm_inference_test_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    data::write_tiny_tokenizer((*root_ / "tokenizer.json").string(), kTexts);
    data::write_tiny_bert_vocab((*root_ / "vocab.txt").string(), kTexts);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static Qwen2Tokenizer qwen() { return Qwen2Tokenizer::load((*root_ / "tokenizer.json").string()); }
  static BertTokenizer bert() { return BertTokenizer::from_vocab_file((*root_ / "vocab.txt").string()); }

  static fs::path* root_;
};
fs::path* Inference::root_ = nullptr;

TEST_F(Inference, FramesEqualTheLoadersAfterBvllmPrep) {
  ASSERT_TRUE(fs::exists(kPrep)) << kPrep << " is not built";
  if (std::system("ffmpeg -version >/dev/null 2>&1") != 0) GTEST_SKIP() << "the ffmpeg command line is not installed";
  const fs::path media = *root_ / "media";
  fs::create_directories(media);
  // A landscape video of 5 s (5 frames at 1 fps, fewer than asked for 8: repeats) and 7 s, a
  // portrait image: every pad and resize path.
  const std::string ff = "ffmpeg -nostdin -v error -y -f lavfi -i ";
  for (const std::string& command :
       {ff + "testsrc2=size=80x48:rate=10:duration=5 -c:v mpeg4 -q:v 4 " + (media / "a.mp4").string(),
        ff + "testsrc=size=64x64:rate=8:duration=7 -c:v mpeg4 -q:v 4 " + (media / "b.mp4").string(),
        ff + "testsrc2=size=40x60 -frames:v 1 " + (media / "c.png").string()}) {
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  json manifest = json::array();
  for (const char* v : {"a.mp4", "b.mp4"}) {
    manifest.push_back({{"id", v},
                        {"video", v},
                        {"conversations",
                         {{{"from", "human"}, {"value", "<video>\nWhat colour is the object?"}},
                          {{"from", "gpt"}, {"value", "red"}}}}});
  }
  manifest.push_back(
      {{"id", "c.png"},
       {"image", "c.png"},
       {"conversations",
        {{{"from", "human"}, {"value", "<image>\nWhat shape is it?"}}, {{"from", "gpt"}, {"value", "square"}}}}});
  std::ofstream(*root_ / "manifest.json") << manifest.dump();
  const fs::path shards = *root_ / "shards";
  const std::string prep = kPrep + " --manifest=" + (*root_ / "manifest.json").string() +
                           " --media_root=" + media.string() + " --out=" + shards.string() +
                           " --frame_size=40 --jpeg_quality=85 --workers=1 > " + (*root_ / "prep.log").string() +
                           " 2>&1";
  ASSERT_EQ(std::system(prep.c_str()), 0) << prep;

  for (bool pad : {true, false}) {
    data::LoaderOptions lo;
    lo.shards = shards.string();
    lo.frames = 8;
    lo.image_size = 32;
    lo.pad_to_square = pad;
    lo.prefetch_threads = 0;
    const data::DataLoader loader(lo, qwen(), bert());
    ASSERT_EQ(loader.reader().size(), 3);
    const MediaOptions options{
        .frame_size = 40, .jpeg_quality = 85, .frames = 8, .image_size = 32, .pad_to_square = pad};
    for (int64_t i = 0; i < 3; ++i) {
      const data::LoadedSample s = loader.load(i);
      const std::string file = (media / s.id).string();
      const Tensor pixels = s.id == "c.png" ? image_pixels(file, options) : video_pixels(file, options);
      ASSERT_EQ(pixels.shape(), s.pixels.shape()) << s.id;
      EXPECT_EQ(testing::rel_error(pixels, s.pixels), 0.0) << s.id << " pad " << pad;
    }
    // Without the JPEG round trip the frames differ (the check above is not vacuous).
    MediaOptions no_jpeg = options;
    no_jpeg.jpeg_quality = 0;
    EXPECT_GT(testing::rel_error(video_pixels((media / "b.mp4").string(), no_jpeg), loader.load(1).pixels), 1e-4);
  }
}

TEST_F(Inference, Stage2PromptsAreTheLoadersTokenization) {
  const Qwen2Tokenizer tokenizer = qwen();
  const int64_t im_end = end_token_ids(tokenizer).front();
  ASSERT_EQ(tokenizer.decode(std::vector<int32_t>{static_cast<int32_t>(im_end)}), "<|im_end|>");
  // A two-turn training sample, tokenized as the loader does.
  const data::Sample sample =
      sample_of("s", data::Sample::VIDEO,
                {"<video>\nWhat colour is the object?", "red", "Which direction does it move?", "left"});
  const data::SampleText text = data::tokenize_sample(sample, tokenizer, {.stage = 2});
  // The question may hold the tag anywhere, or not at all.
  for (const std::string question :
       {"What colour is the object?", "  What colour is the object? ", "What colour is the object?<video>"}) {
    const Prompt first = first_turn_prompt(tokenizer, 2, question, MediaKind::Video);
    EXPECT_EQ(first.question, "What colour is the object?");
    EXPECT_EQ(first.question, data::qformer_question(sample));
    // The prompt is every id before the first supervised one.
    const auto answer = std::find_if(text.labels.begin(), text.labels.end(), [](int64_t l) { return l >= 0; });
    EXPECT_EQ(first.ids, std::vector<int64_t>(text.ids.begin(), text.ids.begin() + (answer - text.labels.begin())))
        << question;
  }
  // Turn two continues after the first answer's tokens; the last one ("<|im_end|>" when generation
  // stopped there) is not in the cache yet, so next_turn_ids starts with it.
  const Prompt first = first_turn_prompt(tokenizer, 2, "What colour is the object?", MediaKind::Video);
  std::vector<int64_t> ids = first.ids;
  const std::vector<int64_t> red = encode(tokenizer, "red"), left = encode(tokenizer, "left");
  ids.insert(ids.end(), red.begin(), red.end());
  const std::vector<int64_t> turn = next_turn_ids(tokenizer, im_end, "Which direction does it move?");
  EXPECT_EQ(turn.front(), im_end);
  ids.insert(ids.end(), turn.begin(), turn.end());
  ids.insert(ids.end(), left.begin(), left.end());
  ids.push_back(im_end);
  const std::vector<int64_t> newline = encode(tokenizer, "\n");
  ids.insert(ids.end(), newline.begin(), newline.end());
  EXPECT_EQ(ids, text.ids);
  // An answer cut short (its last token is not <|im_end|>) is closed before the next turn.
  const std::vector<int64_t> cut = next_turn_ids(tokenizer, red.back(), "Which direction does it move?");
  EXPECT_EQ(std::vector<int64_t>(cut.begin(), cut.begin() + 2), (std::vector<int64_t>{red.back(), im_end}));
  EXPECT_EQ(std::vector<int64_t>(cut.begin() + 2, cut.end()), std::vector<int64_t>(turn.begin() + 1, turn.end()));
}

TEST_F(Inference, ImageAndStage1Prompts) {
  const Qwen2Tokenizer tokenizer = qwen();
  const data::Sample image = sample_of("i", data::Sample::IMAGE, {"<image>\nWhat shape is it?", "square"});
  const data::SampleText text = data::tokenize_sample(image, tokenizer, {.stage = 2});
  const Prompt prompt = first_turn_prompt(tokenizer, 2, "What shape is it?", MediaKind::Image);
  ASSERT_LT(prompt.ids.size(), text.ids.size());
  EXPECT_EQ(prompt.ids, std::vector<int64_t>(text.ids.begin(), text.ids.begin() + prompt.ids.size()));
  EXPECT_EQ(text.labels[prompt.ids.size() - 1], data::kIgnoreIndex);
  EXPECT_NE(text.labels[prompt.ids.size()], data::kIgnoreIndex);
  EXPECT_EQ(std::count(prompt.ids.begin(), prompt.ids.end(), data::kImagePlaceholder), 1);

  // Stage 1: the plain "<video>\n{question}"; the caption follows as " a red ..." (its space belongs
  // to the caption's first word, as the training text tokenizes).
  const data::Sample caption =
      sample_of("c", data::Sample::VIDEO, {"<video>\nDescribe the video.", "a red square moves left."});
  const data::SampleText plain = data::tokenize_sample(caption, tokenizer, {.stage = 1});
  const Prompt p1 = first_turn_prompt(tokenizer, 1, "Describe the video.", MediaKind::Video);
  ASSERT_LT(p1.ids.size(), plain.ids.size());
  EXPECT_EQ(p1.ids, std::vector<int64_t>(plain.ids.begin(), plain.ids.begin() + p1.ids.size()));
  const std::vector<int32_t> rest(plain.ids.begin() + p1.ids.size(), plain.ids.end());
  EXPECT_EQ(tokenizer.decode(rest), " a red square moves left.");
  EXPECT_TRUE(testing::error_of([&] { first_turn_prompt(tokenizer, 3, "x", MediaKind::Video); }).find("stage") !=
              std::string::npos);
}

// Logits that put `top` first at each row (a clear maximum).
Tensor logits_for(const std::vector<int64_t>& top, int64_t vocab) {
  std::vector<float> v(top.size() * vocab, 0.0f);
  for (size_t t = 0; t < top.size(); ++t) v[t * vocab + top[t]] = 1.0f;
  return Tensor::from<float>(v, {static_cast<int64_t>(top.size()), vocab});
}

TEST(CheckAnswer, ComparesTheAnswerThroughItsEndToken) {
  const int64_t kEnd = 9, kNewline = 8, I = data::kIgnoreIndex;
  const std::vector<int64_t> end = {kEnd};
  // Positions 0..6; the answer "5 6 <end>" then "\n", supervised at 3..6. Row t predicts t + 1.
  const Tensor labels = Tensor::from<int64_t>({I, I, I, 5, 6, kEnd, kNewline});
  AnswerCheck c = check_answer(logits_for({0, 0, 5, 6, kEnd, 1, 0}, 10), labels, end);
  EXPECT_TRUE(c.correct);
  EXPECT_EQ(c.expected, (std::vector<int64_t>{5, 6, kEnd}));  // the "\n" after the end is not compared
  EXPECT_EQ(c.predicted, c.expected);
  EXPECT_EQ(c.answer_start, 3);
  EXPECT_EQ(c.first_wrong, -1);
  // A wrong middle token, or a missing end token, is wrong.
  c = check_answer(logits_for({0, 0, 5, 7, kEnd, 1, 0}, 10), labels, end);
  EXPECT_FALSE(c.correct);
  EXPECT_EQ(c.first_wrong, 1);
  EXPECT_EQ(c.predicted, (std::vector<int64_t>{5, 7, kEnd}));
  EXPECT_FALSE(check_answer(logits_for({0, 0, 5, 6, 1, 1, 0}, 10), labels, end).correct);
  // Without end ids every supervised position counts (stage 1).
  EXPECT_FALSE(check_answer(logits_for({0, 0, 5, 6, kEnd, 1, 0}, 10), labels, {}).correct);
  EXPECT_TRUE(check_answer(logits_for({0, 0, 5, 6, kEnd, kNewline, 0}, 10), labels, {}).correct);
  // Two answers (two turns): both are compared, each up to its end.
  const Tensor two = Tensor::from<int64_t>({I, 4, kEnd, kNewline, I, I, 3, kEnd, kNewline});
  c = check_answer(logits_for({4, kEnd, 0, 0, 0, 3, kEnd, 0, 0}, 10), two, end);
  EXPECT_TRUE(c.correct);
  EXPECT_EQ(c.expected, (std::vector<int64_t>{4, kEnd, 3, kEnd}));
  // Equal maxima: the lowest id, as greedy generation picks.
  Tensor tie = ops::zeros({2, 10});
  c = check_answer(tie, Tensor::from<int64_t>({I, 0}), end);
  EXPECT_TRUE(c.correct);
  EXPECT_FALSE(check_answer(tie, Tensor::from<int64_t>({I, 1}), end).correct);
  // Nothing supervised: not correct (nothing was answered).
  EXPECT_FALSE(check_answer(tie, Tensor::from<int64_t>({I, I}), end).correct);
  EXPECT_NE(testing::error_of([&] {
              check_answer(tie, Tensor::from<int64_t>({I, I, I}), end);
            }).find("check_answer"),
            std::string::npos);
}

}  // namespace
}  // namespace bvllm::train
