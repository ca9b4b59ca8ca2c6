// Prompt templates: ChatML as Qwen2-Instruct's Jinja renders it (the reference texts were rendered
// by transformers.js's Jinja engine from the verbatim template, tests/reference/fixtures/
// tokenizer_qwen3.json) and the stage-1 plain format of B-VLLM's preprocess_plain.
#include "data/chat_template.h"

#include <gtest/gtest.h>

#include "runtime/error.h"
#include "tests/support/qwen_tokenizer.h"

namespace bvllm {
namespace {

using Ids = std::vector<int32_t>;

std::vector<ChatMessage> messages_of(const nlohmann::json& list) {
  std::vector<ChatMessage> out;
  for (const auto& m : list) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(ChatTemplate, ChatmlMatchesTheJinjaRendering) {
  const auto& cases = testing::tokenizer_fixture()["chat"];
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    EXPECT_EQ(render_chatml(messages_of(c["messages"]), c["add_generation_prompt"].get<bool>()),
              c["text"].get<std::string>())
        << c["name"];
  }
}

TEST(ChatTemplate, ChatmlByHand) {
  const std::vector<ChatMessage> chat = {{"user", "<video>\nWhat happens?"}, {"assistant", "A dog runs."}};
  EXPECT_EQ(render_chatml(chat, false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n"
            "<|im_start|>assistant\nA dog runs.<|im_end|>\n");
  const std::vector<ChatMessage> with_system = {{"system", "Be brief."}, {"user", "Hi"}};
  EXPECT_EQ(render_chatml(with_system, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chatml({}, true), "<|im_start|>assistant\n");  // no messages: no system prompt either
  EXPECT_EQ(render_chatml({}, false), "");
}

// The golden ids of ../shared/research/models-formats.md §3.2: default system prompt, user
// "Hello, world!", generation prompt.
TEST(ChatTemplate, GoldenIdsWithTheRealTokenizer) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const std::vector<ChatMessage> chat = {{"user", "Hello, world!"}};
  EXPECT_EQ(testing::qwen_tokenizer()->encode(render_chatml(chat, true)),
            (Ids{151644, 8948, 198,  2610, 525,  264, 10950,  17847, 13,     151645, 198, 151644,
                 872,    198,  9707, 11,   1879, 0,   151645, 198,   151644, 77091,  198}));
  for (const auto& c : testing::tokenizer_fixture()["chat"]) {
    const std::string text = render_chatml(messages_of(c["messages"]), c["add_generation_prompt"].get<bool>());
    EXPECT_EQ(testing::qwen_tokenizer()->encode(text), c["ids"].get<Ids>()) << c["name"];
  }
}

// bvlm/train.py, preprocess_multimodal then preprocess_plain:
//   value = value.replace(tok, '').strip(); value = (tok + '\n' + value).strip()
//   conversation = " ".join(turn values)
TEST(ChatTemplate, MediaToFront) {
  EXPECT_EQ(media_to_front("<video>\nWhat happens?", "<video>"), "<video>\nWhat happens?");
  EXPECT_EQ(media_to_front("What happens?\n<video>", "<video>"), "<video>\nWhat happens?");
  EXPECT_EQ(media_to_front("  Describe <video> this <video>  ", "<video>"), "<video>\nDescribe  this");
  EXPECT_EQ(media_to_front("<video>", "<video>"), "<video>");  // "<video>\n" stripped
  EXPECT_EQ(media_to_front("<image>\u3000\n", "<image>"), "<image>");
  EXPECT_EQ(media_to_front("no tag here ", "<video>"), "no tag here ");  // untouched
}

TEST(ChatTemplate, PlainStageOne) {
  EXPECT_EQ(
      render_plain("<video>\nRender a clear and concise summary of the video.", "A man rides a horse.", "<video>"),
      "<video>\nRender a clear and concise summary of the video. A man rides a horse.");
  EXPECT_EQ(render_plain("What is in the image? <image>", "A cat.", "<image>"),
            "<image>\nWhat is in the image? A cat.");
  EXPECT_EQ(render_plain("<video>", "A cat sleeps.", "<video>"), "<video> A cat sleeps.");
  // The caption is kept as written (only a turn with the tag is rewritten).
  EXPECT_EQ(render_plain("<video>\nDescribe.", " Two dogs.\n", "<video>"), "<video>\nDescribe.  Two dogs.\n");
  try {
    render_plain("Describe the video.", "A cat.", "<video>");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must contain <video>"), std::string::npos) << e.what();
  }
  EXPECT_THROW(render_plain("<video>", "x", ""), Error);
}

// A rendered stage-1 text against the reference ids (tokenized whole here; the loader will cut it
// at the placeholder first, as tokenizer_multimodal_token does).
TEST(ChatTemplate, PlainWithTheRealTokenizer) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  for (const auto& c : testing::tokenizer_fixture()["encode"]) {
    if (c["name"] != "caption_plain") continue;
    const std::string text =
        render_plain("<video>\nWhat is happening?", "Two dogs are playing with a ball in a park.", "<video>");
    EXPECT_EQ(text, c["text"].get<std::string>());
    EXPECT_EQ(testing::qwen_tokenizer()->encode(text), c["ids"].get<Ids>());
    return;
  }
  FAIL() << "no caption_plain case in the fixture";
}

}  // namespace
}  // namespace bvllm
