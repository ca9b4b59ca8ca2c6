// Prompt formats of the two training stages (../shared/research/bvllm.md §5, models-formats.md
// §3.2). They render text only; the tokenizer and the loader's label masking come after.
//
//   stage 1 (plain):   "<video>\n{human text} {gpt text}"  (no chat template, no EOS)
//   stage 2 (ChatML):  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
//                      "<|im_start|>user\n<video>\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace bvllm {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (any string is rendered as given)
  std::string content;
};

// What Qwen2-Instruct's template inserts when the first message is not a system message.
inline constexpr std::string_view kQwen2DefaultSystemPrompt = "You are a helpful assistant.";

// Qwen2-Instruct's chat_template (tokenizer_config.json), rendered exactly as its Jinja does:
//   {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
//   {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}
//   {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
//   {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// (one line in the file). With no messages only the generation prompt, if asked, is rendered.
std::string render_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt);

// B-VLLM's preprocess_multimodal for one turn (bvlm/train.py): when `value` contains
// `media_token`, every occurrence is removed, the rest stripped, and the token put in front on a
// line of its own: "<video>\n" + text, stripped again (so a bare "<video>" stays "<video>").
// Strips as Python's str.strip(). A value without the token is returned unchanged.
std::string media_to_front(std::string_view value, std::string_view media_token);

// The stage-1 "plain" format (preprocess_plain after preprocess_multimodal): the two turns of a
// caption sample, each with media_to_front applied, joined by one space:
//   "<video>\nDescribe the video." + " " + "A man rides a horse." Throws bvllm::Error when the
// human turn does not contain `media_token` (the reference asserts it) or the token is empty.
std::string render_plain(std::string_view human, std::string_view gpt, std::string_view media_token);

}  // namespace bvllm
