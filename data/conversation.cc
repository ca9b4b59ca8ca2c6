#include "data/conversation.h"

#include <glog/logging.h>  // defines: CHECK

#include <algorithm>
#include <span>

#include "data/chat_template.h"
#include "data/utf8.h"
#include "runtime/error.h"

namespace bvllm::data {

namespace {

std::string kind_name(Sample::Kind kind) {
  switch (kind) {
    case Sample::VIDEO: return "video";
    case Sample::IMAGE: return "image";
    default: return "text";
  }
}

// Stage 1, preprocess_plain: the two turns joined by a space after media_to_front; every id is a
// label except the placeholder.
void plain(const Sample& sample, const Qwen2Tokenizer& tokenizer, SampleText& out) {
  const std::string_view tag = media_tag(sample.kind());
  BVLLM_REQUIRE(!tag.empty(), "stage 1 (plain) takes video or image caption samples, this one is text-only");
  BVLLM_REQUIRE(sample.conversations_size() == 2, "stage 1 (plain) takes exactly two turns (human, gpt), this one has ",
                sample.conversations_size());
  const std::string text =
      render_plain(sample.conversations(0).value(), sample.conversations(1).value(), tag);  // checks the tag
  out.ids = encode_multimodal(tokenizer, text, tag, media_placeholder(sample.kind()));
  out.labels = out.ids;
}

// Stage 2, preprocess: ChatML with the default system prompt. The reference tokenizes the whole
// conversation once and, for pair k, masks [len(conversation_{k-1}), len(instruction_k)), where
// instruction_k is the conversation through user turn k plus the generation prompt, tokenized on
// its own. Every conversation_k ends with "<|im_end|>\n" right before an added token
// (<|im_start|>), and added tokens cut the text before anything else, so the ids of the whole are
// the ids of the pieces [conversation_{k-1}, conversation_k) concatenated; each piece is encoded
// once, and its instruction part once more for the mask length (the same count as the reference
// even where an answer starting with whitespace tokenizes together with the "\n" before it).
void chatml(const Sample& sample, const Qwen2Tokenizer& tokenizer, SampleText& out) {
  const std::string_view tag = media_tag(sample.kind());
  const int64_t placeholder = media_placeholder(sample.kind());
  const auto& turns = sample.conversations();
  const int first = (!turns.empty() && turns[0].from() != "human") ? 1 : 0;  // "Skip the first one if not human"
  std::vector<ChatMessage> messages;
  for (int i = first; i < turns.size(); ++i) {
    const std::string& from = turns[i].from();
    const bool user = (messages.size() % 2 == 0);
    BVLLM_REQUIRE(from == (user ? "human" : "gpt"), "turn ", i, " is from \"", from, "\", expected \"",
                  (user ? "human" : "gpt"),
                  "\" (stage 2 takes alternating human/gpt turns; a leading non-human turn is dropped)");
    messages.push_back(
        {user ? "user" : "assistant", tag.empty() ? turns[i].value() : media_to_front(turns[i].value(), tag)});
  }
  BVLLM_REQUIRE(!messages.empty() && messages.size() % 2 == 0, messages.size(),
                " turns from the first human one on; stage 2 needs (human, gpt) pairs");

  const std::span<const ChatMessage> all(messages);
  const std::string text = render_chatml(all, false);
  size_t done = 0;  // text offset of conversation_{k-1}'s end
  for (size_t k = 0; k < messages.size() / 2; ++k) {
    const std::string instruction = render_chatml(all.first(2 * k + 1), true);
    const size_t end = render_chatml(all.first(2 * k + 2), false).size();
    CHECK(text.compare(0, instruction.size(), instruction) == 0) << "ChatML prefix mismatch at pair " << k;
    const std::string_view piece = std::string_view(text).substr(done, end - done);
    const std::vector<int64_t> ids = encode_multimodal(tokenizer, piece, tag, placeholder);
    const size_t masked = std::min(
        ids.size(), encode_multimodal(tokenizer, piece.substr(0, instruction.size() - done), tag, placeholder).size());
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.labels.insert(out.labels.end(), masked, kIgnoreIndex);
    out.labels.insert(out.labels.end(), ids.begin() + static_cast<std::ptrdiff_t>(masked), ids.end());
    done = end;
  }
  CHECK_EQ(done, text.size());
}

}  // namespace

std::string_view media_tag(Sample::Kind kind) {
  switch (kind) {
    case Sample::VIDEO: return "<video>";
    case Sample::IMAGE: return "<image>";
    default: return "";
  }
}

int64_t media_placeholder(Sample::Kind kind) {
  switch (kind) {
    case Sample::VIDEO: return kVideoPlaceholder;
    case Sample::IMAGE: return kImagePlaceholder;
    default: return 0;
  }
}

std::vector<int64_t> encode_multimodal(const Qwen2Tokenizer& tokenizer, std::string_view text, std::string_view tag,
                                       int64_t placeholder) {
  std::vector<int64_t> out;
  const auto append = [&](std::string_view chunk) {
    const std::vector<int32_t> ids = tokenizer.encode(chunk);
    out.insert(out.end(), ids.begin(), ids.end());
  };
  if (tag.empty()) {
    append(text);
    return out;
  }
  // Python's str.split(tag): n tags give n + 1 chunks, empty ones included.
  size_t pos = 0;
  for (size_t hit; (hit = text.find(tag, pos)) != std::string_view::npos; pos = hit + tag.size()) {
    append(text.substr(pos, hit - pos));
    out.push_back(placeholder);
  }
  append(text.substr(pos));
  return out;
}

std::string qformer_question(const Sample& sample) {
  const std::string_view tag = media_tag(sample.kind());
  if (tag.empty()) return "";
  for (const Turn& turn : sample.conversations()) {
    const std::string_view value = turn.value();
    if (turn.from() != "human" || value.find(tag) == std::string_view::npos) continue;
    std::string rest;
    size_t pos = 0;
    for (size_t hit; (hit = value.find(tag, pos)) != std::string_view::npos; pos = hit + tag.size())
      rest.append(value.substr(pos, hit - pos));
    rest.append(value.substr(pos));
    BVLLM_REQUIRE(!utf8::find_invalid(rest), "sample \"", sample.id(), "\": a turn is not valid UTF-8");
    return std::string(utf8::strip_python(rest));
  }
  return "";
}

SampleText tokenize_sample(const Sample& sample, const Qwen2Tokenizer& tokenizer, const TextOptions& options) {
  BVLLM_REQUIRE(options.stage == 1 || options.stage == 2, "TextOptions.stage is ", options.stage, ", expected 1 or 2");
  BVLLM_REQUIRE(options.max_length > 0, "TextOptions.max_length is ", options.max_length, ", expected > 0");
  SampleText out;
  try {
    if (options.stage == 1)
      plain(sample, tokenizer, out);
    else
      chatml(sample, tokenizer, out);
  } catch (const Error& e) {
    throw Error(str_cat("sample \"", sample.id(), "\": ", e.what()));
  }

  const int64_t placeholder = media_placeholder(sample.kind());
  if (placeholder != 0) {
    const auto count = std::count(out.ids.begin(), out.ids.end(), placeholder);
    BVLLM_REQUIRE(count == 1, "sample \"", sample.id(), "\" (", kind_name(sample.kind()), "): its turns hold ", count,
                  " ", media_tag(sample.kind()), " tags, expected exactly one (one placeholder per sample)");
    const auto at = std::find(out.ids.begin(), out.ids.end(), placeholder) - out.ids.begin();
    BVLLM_REQUIRE(at < options.max_length, "sample \"", sample.id(), "\": its ", media_tag(sample.kind()),
                  " placeholder is at token ", at, ", past max_length ", options.max_length,
                  " (the text is cut there before the visual tokens are spliced in)");
    // The model never predicts the placeholder (its positions become visual tokens).
    for (size_t i = 0; i < out.ids.size(); ++i)
      if (out.ids[i] == placeholder) out.labels[i] = kIgnoreIndex;
  }
  if (static_cast<int64_t>(out.ids.size()) > options.max_length) {
    out.ids.resize(options.max_length);
    out.labels.resize(options.max_length);
  }
  out.question = qformer_question(sample);
  return out;
}

}  // namespace bvllm::data
