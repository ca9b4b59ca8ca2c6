// The loader's text side against B-VLLM's training code: ids, labels and the Q-Former prompt that
// a port of bvlm/train.py (preprocess_plain, preprocess, tokenizer_multimodal_token, the
// collator's truncation) gives with Hugging Face tokenizers on the real Qwen vocabulary
// (tests/reference/make_conversation_fixtures.mjs wrote tests/reference/fixtures/
// conversation_qwen.json), plus the errors for conversations a stage cannot take.
#include "data/conversation.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>  // defines: nlohmann::json

#include "layers/bvllm.h"
#include "runtime/error.h"
#include "tests/support/messages.h"
#include "tests/support/qwen_tokenizer.h"

namespace bvllm::data {
namespace {

using Ids = std::vector<int64_t>;
using testing::error_of;

static_assert(kVideoPlaceholder == layers::kVideoTokenId && kImagePlaceholder == layers::kImageTokenId &&
              kIgnoreIndex == layers::kIgnoreIndex);

const nlohmann::json& fixture() {
  static const nlohmann::json f = [] {
    const std::string path = std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/conversation_qwen.json";
    std::ifstream in(path);
    BVLLM_REQUIRE(in, path, ": cannot open (regenerate with node tests/reference/make_conversation_fixtures.mjs)");
    return nlohmann::json::parse(in);
  }();
  return f;
}

Sample::Kind kind_of(const std::string& name) {
  if (name == "video") return Sample::VIDEO;
  if (name == "image") return Sample::IMAGE;
  return Sample::TEXT;
}

Sample make_sample(Sample::Kind kind, const std::vector<std::pair<std::string, std::string>>& turns,
                   const std::string& id = "s0") {
  Sample s;
  s.set_id(id);
  s.set_kind(kind);
  for (const auto& [from, value] : turns) {
    Turn* t = s.add_conversations();
    t->set_from(from);
    t->set_value(value);
  }
  return s;
}

TEST(Conversation, MatchesTheReferenceTrainingCode) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const auto& cases = fixture()["cases"];
  ASSERT_GE(cases.size(), 12u);
  for (const auto& c : cases) {
    Sample sample;
    sample.set_id(c["name"].get<std::string>());
    sample.set_kind(kind_of(c["kind"].get<std::string>()));
    for (const auto& t : c["conversations"]) {
      Turn* turn = sample.add_conversations();
      turn->set_from(t["from"].get<std::string>());
      turn->set_value(t["value"].get<std::string>());
    }
    const TextOptions options{.stage = c["stage"].get<int>(), .max_length = c["max_length"].get<int64_t>()};
    const SampleText text = tokenize_sample(sample, *testing::qwen_tokenizer(), options);
    EXPECT_EQ(text.ids, c["input_ids"].get<Ids>()) << c["name"];
    EXPECT_EQ(text.labels, c["labels"].get<Ids>()) << c["name"];
    EXPECT_EQ(text.question, c["prompt"].get<std::string>()) << c["name"];
  }
}

// What the supervised tokens spell, independently of the reference ids: stage 2 learns exactly the
// answers with their "<|im_end|>\n"; stage 1 everything but the placeholder.
TEST(Conversation, SupervisedTextByStage) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const auto supervised = [&](const SampleText& t) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < t.labels.size(); ++i) {
      if (t.labels[i] == kIgnoreIndex) continue;
      EXPECT_EQ(t.labels[i], t.ids[i]);
      ids.push_back(static_cast<int32_t>(t.labels[i]));
    }
    return tok.decode(ids);
  };
  const Sample chat = make_sample(
      Sample::VIDEO,
      {{"human", "Where is it?\n<video>"}, {"gpt", "On a beach."}, {"human", "And the weather?"}, {"gpt", "Sunny."}});
  const SampleText two = tokenize_sample(chat, tok, {.stage = 2});
  EXPECT_EQ(supervised(two), "On a beach.<|im_end|>\nSunny.<|im_end|>\n");
  EXPECT_EQ(std::count(two.ids.begin(), two.ids.end(), kVideoPlaceholder), 1);
  EXPECT_EQ(two.question, "Where is it?");

  const Sample caption = make_sample(Sample::IMAGE, {{"human", "<image>\nDescribe."}, {"gpt", "A red car."}});
  const SampleText one = tokenize_sample(caption, tok, {.stage = 1});
  ASSERT_FALSE(one.ids.empty());
  EXPECT_EQ(one.ids[0], kImagePlaceholder);
  EXPECT_EQ(one.labels[0], kIgnoreIndex);
  EXPECT_EQ(supervised(one), "\nDescribe. A red car.");
}

TEST(Conversation, EncodeMultimodalSplitsAtEveryTag) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const auto enc = [&](std::string_view s) {
    const auto ids = tok.encode(s);
    return Ids(ids.begin(), ids.end());
  };
  Ids expected = enc("a ");
  expected.push_back(-7);
  const Ids b = enc(" b");
  expected.insert(expected.end(), b.begin(), b.end());
  expected.push_back(-7);  // an empty chunk between two tags, and at the end, encodes to nothing
  expected.push_back(-7);
  EXPECT_EQ(encode_multimodal(tok, "a <x> b<x><x>", "<x>", -7), expected);
  EXPECT_EQ(encode_multimodal(tok, "a <x> b", "", -7), enc("a <x> b"));  // no tag: one chunk
  EXPECT_EQ(encode_multimodal(tok, "<x>", "<x>", -7), Ids{-7});
}

TEST(Conversation, QuestionIsTheFirstHumanTurnWithTheTag) {
  EXPECT_EQ(qformer_question(make_sample(Sample::VIDEO, {{"human", "Hi"},
                                                         {"gpt", "<video> not a question"},
                                                         {"human", " <video>\n Count the cars. "},
                                                         {"gpt", "3"},
                                                         {"human", "<video> later"}})),
            "Count the cars.");
  EXPECT_EQ(qformer_question(make_sample(Sample::IMAGE, {{"human", "What <image> is <image> it?"}})), "What  is  it?");
  EXPECT_EQ(qformer_question(make_sample(Sample::TEXT, {{"human", "<video>\nText only"}, {"gpt", "x"}})), "");
  EXPECT_EQ(qformer_question(make_sample(Sample::VIDEO, {{"human", "no tag"}, {"gpt", "x"}})), "");
}

TEST(Conversation, TruncationKeepsThePlaceholderOrRefuses) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const Sample s =
      make_sample(Sample::VIDEO, {{"human", "A long question first, then the video. <video>"}, {"gpt", "Ok."}});
  const SampleText full = tokenize_sample(s, tok, {.stage = 2});
  const SampleText cut = tokenize_sample(s, tok, {.stage = 2, .max_length = 20});
  ASSERT_EQ(cut.ids.size(), 20u);
  EXPECT_TRUE(std::equal(cut.ids.begin(), cut.ids.end(), full.ids.begin()));
  EXPECT_TRUE(std::equal(cut.labels.begin(), cut.labels.end(), full.labels.begin()));
  // The placeholder sits after the 14 ids of "<system block><|im_start|>user\n": a cut before it
  // would leave frames with nowhere to go.
  const auto at = std::find(full.ids.begin(), full.ids.end(), kVideoPlaceholder) - full.ids.begin();
  EXPECT_EQ(at, 14);
  EXPECT_NE(error_of([&] {
              tokenize_sample(s, tok, {.stage = 2, .max_length = at});
            }).find("placeholder is at token 14, past max_length 14"),
            std::string::npos);
  EXPECT_NO_THROW(tokenize_sample(s, tok, {.stage = 2, .max_length = at + 1}));
}

TEST(Conversation, ErrorsNameTheSampleAndTheProblem) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const auto error = [&](const Sample& s, int stage) {
    return error_of([&] { tokenize_sample(s, tok, {.stage = stage}); });
  };
  const auto has = [](const std::string& message, const std::string& part) {
    return message.find(part) != std::string::npos;
  };
  const std::string text_stage1 = error(make_sample(Sample::TEXT, {{"human", "a"}, {"gpt", "b"}}, "t1"), 1);
  EXPECT_TRUE(has(text_stage1, "sample \"t1\"") && has(text_stage1, "text-only")) << text_stage1;
  const std::string three = error(make_sample(Sample::VIDEO, {{"human", "<video>"}, {"gpt", "b"}, {"human", "c"}}), 1);
  EXPECT_TRUE(has(three, "exactly two turns")) << three;
  const std::string untagged = error(make_sample(Sample::VIDEO, {{"human", "a"}, {"gpt", "b"}}), 1);
  EXPECT_TRUE(has(untagged, "must contain <video>")) << untagged;
  const std::string odd = error(make_sample(Sample::VIDEO, {{"human", "<video>"}, {"gpt", "b"}, {"human", "c"}}), 2);
  EXPECT_TRUE(has(odd, "(human, gpt) pairs")) << odd;
  const std::string order = error(make_sample(Sample::IMAGE, {{"human", "<image>"}, {"human", "b"}}), 2);
  EXPECT_TRUE(has(order, "turn 1 is from \"human\", expected \"gpt\"")) << order;
  const std::string none = error(make_sample(Sample::VIDEO, {{"human", "a"}, {"gpt", "b"}}), 2);
  EXPECT_TRUE(has(none, "hold 0 <video> tags, expected exactly one")) << none;
  const std::string two =
      error(make_sample(Sample::VIDEO, {{"human", "<video>a"}, {"gpt", "b"}, {"human", "<video>c"}, {"gpt", "d"}}), 2);
  EXPECT_TRUE(has(two, "hold 2 <video> tags")) << two;
  const std::string bad_utf8 = error(make_sample(Sample::TEXT, {{"human", "a\xff"}, {"gpt", "b"}}, "u8"), 2);
  EXPECT_TRUE(has(bad_utf8, "sample \"u8\"")) << bad_utf8;
  EXPECT_TRUE(has(error(make_sample(Sample::TEXT, {{"human", "a"}, {"gpt", "b"}}), 3), "expected 1 or 2"));
}

}  // namespace
}  // namespace bvllm::data
