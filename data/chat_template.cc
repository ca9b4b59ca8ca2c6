#include "data/chat_template.h"

#include "data/utf8.h"
#include "runtime/error.h"

namespace bvllm {

std::string render_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[0].role != "system") {
      out += "<|im_start|>system\n";
      out += kQwen2DefaultSystemPrompt;
      out += "<|im_end|>\n";
    }
    out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string media_to_front(std::string_view value, std::string_view media_token) {
  BVLLM_REQUIRE(!media_token.empty(), "media_to_front: empty media token");
  if (value.find(media_token) == std::string_view::npos) return std::string(value);
  BVLLM_REQUIRE(!utf8::find_invalid(value), "media_to_front: the text is not valid UTF-8");
  std::string rest;
  size_t pos = 0;
  for (size_t hit; (hit = value.find(media_token, pos)) != std::string_view::npos; pos = hit + media_token.size())
    rest.append(value.substr(pos, hit - pos));
  rest.append(value.substr(pos));
  const std::string joined = std::string(media_token) + "\n" + std::string(utf8::strip_python(rest));
  return std::string(utf8::strip_python(joined));
}

std::string render_plain(std::string_view human, std::string_view gpt, std::string_view media_token) {
  BVLLM_REQUIRE(!media_token.empty(), "plain template: empty media token");
  BVLLM_REQUIRE(human.find(media_token) != std::string_view::npos, "plain template: the human turn must contain ",
                media_token, " (stage 1 takes caption samples with a video or an image), got \"", human, "\"");
  return media_to_front(human, media_token) + " " + media_to_front(gpt, media_token);
}

}  // namespace bvllm
