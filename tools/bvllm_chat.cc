// bvllm_chat: answer one prompt with a Qwen2 checkpoint (text only, for now).
//
//   build/bin/bvllm_chat --llm=DIR --prompt="Why is the sky blue?"
//   build/bin/bvllm_chat --llm=DIR --prompt="Once upon a time" --raw --greedy --max_new_tokens=32
//   build/bin/bvllm_chat --llm=DIR --prompt="Hi" --logits_out=logits.safetensors --max_new_tokens=0
//
// DIR is a Hugging Face model directory: config.json, model.safetensors (or the sharded index) and
// tokenizer.json. The prompt goes through Qwen2-Instruct's chat template (default system prompt,
// generation prompt) unless --raw; the answer streams to stdout as it is generated, and stops at
// <|im_end|>, <|endoftext|>, the config's eos ids, or --max_new_tokens. Sampling follows the
// defaults of Qwen2-Instruct's generation_config.json (temperature 0.7, top_p 0.8, top_k 20; its
// repetition_penalty 1.05 is not implemented); --greedy takes the argmax instead.
// --logits_out writes the logits of every prompt position as safetensors: "logits", [tokens,
// vocab], f32 (computed before generation, in one forward pass over the prompt).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/qwen2_tokenizer.h"
#include "layers/generate.h"
#include "layers/qwen2_checkpoint.h"
#include "runtime/autograd.h"
#include "runtime/io/safetensors.h"

DEFINE_string(llm, "", "Hugging Face Qwen2 model directory (config.json, safetensors, tokenizer.json)");
DEFINE_string(tokenizer, "", "tokenizer.json or a directory holding one (default: --llm)");
DEFINE_string(prompt, "", "the user's message (with --raw: the whole text given to the model)");
DEFINE_string(system, std::string(bvllm::kQwen2DefaultSystemPrompt), "system message of the chat template");
DEFINE_bool(raw, false, "give --prompt to the model as it is, without the chat template");
DEFINE_int64(max_new_tokens, 256, "stop after this many new tokens");
DEFINE_bool(greedy, false, "take the most likely token at each step instead of sampling");
DEFINE_uint64(seed, 0, "sampling seed (the same seed gives the same answer)");
DEFINE_double(temperature, 0.7, "sampling temperature");
DEFINE_double(top_p, 0.8, "sampling: keep the most likely tokens up to this probability mass");
DEFINE_int64(top_k, 20, "sampling: keep the k most likely tokens (0: all)");
DEFINE_string(logits_out, "", "write the prompt's logits here as safetensors (\"logits\", [tokens, vocab], f32)");
DEFINE_string(dtype, "f32", "compute dtype of the weights: f32 or bf16");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default)");
DEFINE_bool(stats, false, "print prompt length, load time and tokens/s on stderr");

namespace {

using bvllm::Error;
using bvllm::Tensor;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool ends_with_replacement_char(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

int run() {
  BVLLM_REQUIRE(!FLAGS_llm.empty(), "--llm is required (a Hugging Face Qwen2 model directory)");
  BVLLM_REQUIRE(!FLAGS_prompt.empty(), "--prompt is required");
  BVLLM_REQUIRE(FLAGS_dtype == "f32" || FLAGS_dtype == "bf16", "--dtype must be f32 or bf16, got '", FLAGS_dtype, "'");
  if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);

  auto start = std::chrono::steady_clock::now();
  const bvllm::Qwen2Tokenizer tokenizer =
      bvllm::Qwen2Tokenizer::load(FLAGS_tokenizer.empty() ? FLAGS_llm : FLAGS_tokenizer);
  auto model =
      bvllm::layers::load_qwen2(FLAGS_llm, {.dtype = FLAGS_dtype == "bf16" ? bvllm::DType::BF16 : bvllm::DType::F32});
  model->eval();
  const double load_s = seconds_since(start);

  std::string text = FLAGS_prompt;
  if (!FLAGS_raw) {
    std::vector<bvllm::ChatMessage> messages;
    if (!FLAGS_system.empty()) messages.push_back({"system", FLAGS_system});
    messages.push_back({"user", FLAGS_prompt});
    text = bvllm::render_chatml(messages, /*add_generation_prompt=*/true);
  }
  const std::vector<int32_t> ids32 = tokenizer.encode(text);
  const std::vector<int64_t> ids(ids32.begin(), ids32.end());
  const int64_t vocab = model->config().vocab_size;
  for (int64_t id : ids)
    BVLLM_REQUIRE(id < vocab, tokenizer.source(), ": token id ", id, " is outside the model's vocabulary of ", vocab,
                  " (", FLAGS_llm, "/config.json)");

  if (!FLAGS_logits_out.empty()) {
    bvllm::NoGradGuard no_grad;
    Tensor input = Tensor::from<int64_t>(ids, {1, static_cast<int64_t>(ids.size())});
    Tensor logits = model->forward(input).reshape({static_cast<int64_t>(ids.size()), vocab}).to(bvllm::DType::F32);
    bvllm::save_safetensors(FLAGS_logits_out, {{"logits", logits}});
  }

  bvllm::layers::GenerationOptions options{.max_new_tokens = FLAGS_max_new_tokens,
                                           .greedy = FLAGS_greedy,
                                           .temperature = FLAGS_temperature,
                                           .top_k = FLAGS_top_k,
                                           .top_p = FLAGS_top_p,
                                           .seed = FLAGS_seed};
  options.eos_token_ids = model->config().eos_token_ids;
  for (const auto& added : tokenizer.added_tokens()) {
    if (added.content == "<|im_end|>" || added.content == "<|endoftext|>") options.eos_token_ids.push_back(added.id);
  }

  // Stream: print what the tokens so far decode to beyond what is printed, holding back while the
  // text ends in a character cut in two (decoded as U+FFFD until its last byte arrives).
  std::vector<int32_t> generated;
  size_t printed = 0;
  auto flush_text = [&](bool final) {
    const std::string answer = tokenizer.decode(generated, /*skip_special_tokens=*/true);
    if (!final && ends_with_replacement_char(answer)) return;
    if (answer.size() > printed) std::cout << answer.substr(printed) << std::flush;
    printed = std::max(printed, answer.size());
  };
  bvllm::layers::GenerationResult result = bvllm::layers::generate(*model, ids, options, [&](int64_t token) {
    generated.push_back(static_cast<int32_t>(token));
    flush_text(false);
  });
  flush_text(true);
  std::cout << "\n";
  std::cout.flush();
  BVLLM_REQUIRE(std::cout.good(), "cannot write to stdout");
  if (FLAGS_stats) {
    const double steps = std::max<double>(1.0, static_cast<double>(result.tokens.size()) - 1);
    std::cerr << "bvllm_chat: load " << load_s << " s; prompt " << ids.size() << " tokens in " << result.prefill_seconds
              << " s (" << ids.size() / result.prefill_seconds << " tokens/s); " << result.tokens.size()
              << " new tokens, " << steps / std::max(result.decode_seconds, 1e-9) << " tokens/s after the first; "
              << (result.stopped_at_eos ? "stopped at eos" : "max_new_tokens") << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "bvllm_chat --llm=DIR --prompt=TEXT [--raw] [--max_new_tokens=N] [--greedy] [--seed=S] "
      "[--temperature=T --top_p=P --top_k=K] [--logits_out=FILE]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  try {
    BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "'");
    return run();
  } catch (const std::exception& e) {
    std::cerr << "bvllm_chat: " << e.what() << "\n";
    return 1;
  }
}
