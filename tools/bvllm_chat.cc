// bvllm_chat: answer prompts with a Qwen2 checkpoint (text only) or a trained B-VLLM (about a
// video or an image).
//
//   build/bin/bvllm_chat --llm=DIR --prompt="Why is the sky blue?"
//   build/bin/bvllm_chat --llm=DIR --prompt="Once upon a time" --raw --greedy --max_new_tokens=32
//   build/bin/bvllm_chat --llm=DIR --prompt="Hi" --logits_out=logits.safetensors --max_new_tokens=0
//   build/bin/bvllm_chat --model=runs/tiny_stage2 --video=clip.mp4 --frame_size=96 --greedy
//       --prompt="What colour is the object?"      (one command line)
//   build/bin/bvllm_chat --model=runs/tiny_stage2 --video=clip.mp4 --frame_size=96 --greedy --interactive
//
// --llm: DIR is a Hugging Face model directory: config.json, model.safetensors (or the sharded
// index) and tokenizer.json. The prompt goes through Qwen2-Instruct's chat template (--system,
// generation prompt) unless --raw.
//
// --model: a bvllm_train checkpoint (a run directory, its checkpoints/ or one step directory;
// tools/train/inference.h), with --video or --image. The file is prepared as bvllm_prep and the
// training loader prepared the training data (1-fps frames with the short side --frame_size, the
// JPEG round trip, the recipe's frame count, image size and pad), and the prompt is the recipe's
// stage format: ChatML with the default system prompt and the <video>/<image> placeholder in the
// first user turn (stage 2), or the plain "<video>\n{prompt}" of stage 1. The first question also
// conditions the Q-Formers. --interactive then reads further questions from stdin, one per line,
// as later turns of the same ChatML conversation: the visual tokens are computed once (for the
// first question) and the KV cache keeps every earlier turn, so a turn only runs its own tokens.
// Without --prompt the first question is stdin's first line too.
//
// Answers stream to stdout, one line each, and stop at <|im_end|>, <|endoftext|>, the config's eos
// ids, or --max_new_tokens. Sampling follows the defaults of Qwen2-Instruct's
// generation_config.json (temperature 0.7, top_p 0.8, top_k 20; its repetition_penalty 1.05 is not
// implemented); --greedy takes the argmax instead. --logits_out writes the logits of every
// position of the (first) prompt as safetensors: "logits", [positions, vocab], f32 (computed
// before generation, in one forward pass; with --model the positions are those after the visual
// tokens are spliced in).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/qwen2_tokenizer.h"
#include "layers/generate.h"
#include "layers/qwen2_checkpoint.h"
#include "runtime/autograd.h"
#include "runtime/io/safetensors.h"
#include "runtime/ops.h"
#include "tools/train/inference.h"

DEFINE_string(llm, "", "Hugging Face Qwen2 model directory (config.json, safetensors, tokenizer.json)");
DEFINE_string(model, "", "a B-VLLM bvllm_train checkpoint: run directory, checkpoint directory or step directory");
DEFINE_string(video, "", "--model: the video to ask about");
DEFINE_string(image, "", "--model: the image to ask about");
DEFINE_bool(interactive, false, "--model: read further questions from stdin, one per line (multi-turn)");
DEFINE_int64(frame_size, 336, "--model: short side of the 1-fps frames, as bvllm_prep --frame_size made the data");
DEFINE_int32(jpeg_quality, 90, "--model: JPEG quality of the frames, as bvllm_prep --jpeg_quality (0: no JPEG)");
DEFINE_string(tokenizer, "", "tokenizer.json or a directory holding one (default: --llm's, or the recipe's)");
DEFINE_string(bert_vocab, "", "--model: the Q-Formers' vocab.txt (default: the recipe's)");
DEFINE_string(prompt, "", "the user's message (with --raw: the whole text given to the model)");
DEFINE_string(system, std::string(bvllm::kQwen2DefaultSystemPrompt),
              "--llm: system message of the chat template (--model uses the default, as training did)");
DEFINE_bool(raw, false, "--llm: give --prompt to the model as it is, without the chat template");
DEFINE_int64(max_new_tokens, 256, "stop after this many new tokens");
DEFINE_bool(greedy, false, "take the most likely token at each step instead of sampling");
DEFINE_uint64(seed, 0, "sampling seed (the same seed gives the same answer)");
DEFINE_double(temperature, 0.7, "sampling temperature");
DEFINE_double(top_p, 0.8, "sampling: keep the most likely tokens up to this probability mass");
DEFINE_int64(top_k, 20, "sampling: keep the k most likely tokens (0: all)");
DEFINE_string(logits_out, "", "write the prompt's logits here as safetensors (\"logits\", [tokens, vocab], f32)");
DEFINE_string(dtype, "f32", "compute dtype of the weights: f32 or bf16");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default)");
DEFINE_int64(gumbel_seed, -1,
             "--model: draw frame selection's Gumbel noise from this seed, as the released code does at inference "
             "(-1: the noise-free softmax)");
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

bvllm::layers::GenerationOptions generation_options(const std::vector<int64_t>& eos) {
  bvllm::layers::GenerationOptions options{.max_new_tokens = FLAGS_max_new_tokens,
                                           .greedy = FLAGS_greedy,
                                           .temperature = FLAGS_temperature,
                                           .top_k = FLAGS_top_k,
                                           .top_p = FLAGS_top_p,
                                           .seed = FLAGS_seed};
  options.eos_token_ids = eos;
  return options;
}

// Streams one answer: each new token's text goes to stdout as soon as it decodes, holding back
// while the text ends in a character cut in two (decoded as U+FFFD until its last byte arrives).
class AnswerPrinter {
 public:
  explicit AnswerPrinter(const bvllm::Qwen2Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  void operator()(int64_t token) {
    generated_.push_back(static_cast<int32_t>(token));
    flush(false);
  }
  void finish() {
    flush(true);
    std::cout << "\n";
    std::cout.flush();
    BVLLM_REQUIRE(std::cout.good(), "cannot write to stdout");
  }

 private:
  void flush(bool final) {
    const std::string answer = tokenizer_.decode(generated_, /*skip_special_tokens=*/true);
    if (!final && ends_with_replacement_char(answer)) return;
    if (answer.size() > printed_) std::cout << answer.substr(printed_) << std::flush;
    printed_ = std::max(printed_, answer.size());
  }
  const bvllm::Qwen2Tokenizer& tokenizer_;
  std::vector<int32_t> generated_;
  size_t printed_ = 0;
};

void print_stats(const bvllm::layers::GenerationResult& result, size_t prompt_tokens) {
  const double steps = std::max<double>(1.0, static_cast<double>(result.tokens.size()) - 1);
  std::cerr << "bvllm_chat: prompt " << prompt_tokens << " tokens in " << result.prefill_seconds << " s ("
            << prompt_tokens / result.prefill_seconds << " tokens/s); " << result.tokens.size() << " new tokens, "
            << steps / std::max(result.decode_seconds, 1e-9) << " tokens/s after the first; "
            << (result.stopped_at_eos ? "stopped at eos" : "max_new_tokens") << "\n";
}

// The next question: --prompt first, then stdin's lines (blank ones skipped); nullopt at the end.
std::optional<std::string> next_question(bool first) {
  if (first && !FLAGS_prompt.empty()) return FLAGS_prompt;
  if (!first && !FLAGS_interactive) return std::nullopt;
  std::string line;
  while (true) {
    if (isatty(STDIN_FILENO)) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) return std::nullopt;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) return line;
  }
}

// --model: a trained B-VLLM about a video or an image.
int run_bvllm() {
  BVLLM_REQUIRE(FLAGS_video.empty() != FLAGS_image.empty(), "--model needs exactly one of --video and --image");
  BVLLM_REQUIRE(!FLAGS_prompt.empty() || FLAGS_interactive,
                "--prompt is required (or --interactive, to read the questions from stdin)");
  BVLLM_REQUIRE(!FLAGS_raw, "--raw is for --llm; --model uses its recipe's prompt format");
  BVLLM_REQUIRE(FLAGS_dtype == "f32", "--model computes in f32 (the CPU's precision), got --dtype=", FLAGS_dtype);
  namespace train = bvllm::train;
  auto start = std::chrono::steady_clock::now();
  train::LoadedModel m =
      train::load_trained_model(FLAGS_model, {.tokenizer = FLAGS_tokenizer, .bert_vocab = FLAGS_bert_vocab});
  const bvllm::layers::BvllmForCausalLM& model = *m.model;
  const bvllm::Qwen2Tokenizer& tokenizer = m.tokenizers.qwen;
  const int stage = static_cast<int>(m.recipe.data().stage());
  BVLLM_REQUIRE(stage == 2 || !FLAGS_interactive, m.checkpoint,
                ": a stage-1 model answers one --prompt (its captions have no chat format); --interactive needs a "
                "stage-2 checkpoint");
  const train::MediaKind kind = FLAGS_video.empty() ? train::MediaKind::Image : train::MediaKind::Video;
  const train::MediaOptions media =
      train::media_options(m.recipe, {.frame_size = FLAGS_frame_size, .jpeg_quality = FLAGS_jpeg_quality});
  const Tensor pixels = kind == train::MediaKind::Video ? train::video_pixels(FLAGS_video, media)
                                                        : train::image_pixels(FLAGS_image, media);
  const double load_s = seconds_since(start);
  if (FLAGS_stats)
    std::cerr << "bvllm_chat: " << m.checkpoint << " (step " << m.step << ", stage " << stage << ") and "
              << pixels.size(0) << " frames loaded in " << load_s << " s\n";

  const std::optional<std::string> first = next_question(true);
  if (!first) return 0;  // --interactive with nothing on stdin
  const train::Prompt prompt = train::first_turn_prompt(tokenizer, stage, *first, kind);
  const int64_t vocab = model.config().vocab_size;
  for (int64_t id : prompt.ids)
    BVLLM_REQUIRE(id < vocab, tokenizer.source(), ": token id ", id, " is outside the model's vocabulary of ", vocab);
  const std::vector<int32_t> bert = m.tokenizers.bert.encode(prompt.question);
  bvllm::layers::BvllmSample sample;
  sample.ids = Tensor::from<int64_t>(prompt.ids);
  sample.pixels = pixels;
  sample.bert_ids = Tensor::from<int64_t>(std::vector<int64_t>(bert.begin(), bert.end()));
  sample.bert_mask = bvllm::ops::ones(sample.bert_ids.shape(), bvllm::DType::I64);

  bvllm::NoGradGuard no_grad;
  // The visual tokens, once: selected for the first question, kept in the KV cache for every turn.
  bvllm::Generator gumbel{.seed = static_cast<uint64_t>(std::max<int64_t>(FLAGS_gumbel_seed, 0))};
  const bvllm::layers::BvllmInput input = model.input_embeds(
      sample, {.generator = FLAGS_gumbel_seed >= 0 ? &gumbel : nullptr, .noise_free = FLAGS_gumbel_seed < 0});
  const int64_t positions = input.embeds.size(0);
  if (!FLAGS_logits_out.empty()) {
    Tensor logits = model.forward_embeds(input.embeds.reshape({1, positions, input.embeds.size(1)}))
                        .reshape({positions, vocab})
                        .to(bvllm::DType::F32);
    bvllm::save_safetensors(FLAGS_logits_out, {{"logits", logits}});
  }
  std::vector<int64_t> eos = model.config().eos_token_ids;
  for (int64_t id : train::end_token_ids(tokenizer)) eos.push_back(id);
  const bvllm::layers::GenerationOptions options = generation_options(eos);

  bvllm::layers::KVCache cache(model.config());
  AnswerPrinter print_first(tokenizer);
  bvllm::layers::GenerationResult result =
      bvllm::layers::generate_from_embeds(model, cache, input.embeds, options, [&](int64_t t) { print_first(t); });
  print_first.finish();
  if (FLAGS_stats) print_stats(result, static_cast<size_t>(positions));
  while (const std::optional<std::string> question = next_question(false)) {
    // Continue the cache: the last answer's final token (not in the cache yet), the turn's end, the
    // next user turn and the generation prompt. An answer cut by --max_new_tokens has no last token
    // when it is empty; then the assistant turn is closed right away.
    std::vector<int64_t> ids;
    if (result.tokens.empty()) {
      ids = train::next_turn_ids(tokenizer, train::end_token_ids(tokenizer).front(), *question);
    } else {
      ids = train::next_turn_ids(tokenizer, result.tokens.back(), *question);
    }
    AnswerPrinter print(tokenizer);
    result = bvllm::layers::generate(model, cache, ids, options, [&](int64_t t) { print(t); });
    print.finish();
    if (FLAGS_stats) print_stats(result, ids.size());
  }
  return 0;
}

// --llm: a Qwen2 checkpoint, text only.
int run_llm() {
  BVLLM_REQUIRE(!FLAGS_prompt.empty(), "--prompt is required");
  BVLLM_REQUIRE(FLAGS_video.empty() && FLAGS_image.empty() && !FLAGS_interactive,
                "--video, --image and --interactive are for --model (a B-VLLM checkpoint)");

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

  std::vector<int64_t> eos = model->config().eos_token_ids;
  for (const auto& added : tokenizer.added_tokens()) {
    if (added.content == "<|im_end|>" || added.content == "<|endoftext|>") eos.push_back(added.id);
  }
  AnswerPrinter print(tokenizer);
  bvllm::layers::GenerationResult result =
      bvllm::layers::generate(*model, ids, generation_options(eos), [&](int64_t t) { print(t); });
  print.finish();
  if (FLAGS_stats) {
    std::cerr << "bvllm_chat: load " << load_s << " s\n";
    print_stats(result, ids.size());
  }
  return 0;
}

int run() {
  BVLLM_REQUIRE(FLAGS_llm.empty() != FLAGS_model.empty(),
                "give one of --llm (a Hugging Face Qwen2 directory) and --model (a B-VLLM bvllm_train checkpoint)");
  BVLLM_REQUIRE(FLAGS_dtype == "f32" || FLAGS_dtype == "bf16", "--dtype must be f32 or bf16, got '", FLAGS_dtype, "'");
  if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);
  return FLAGS_model.empty() ? run_llm() : run_bvllm();
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "bvllm_chat --llm=DIR --prompt=TEXT [--raw] [--max_new_tokens=N] [--greedy] [--seed=S] "
      "[--temperature=T --top_p=P --top_k=K] [--logits_out=FILE]\n"
      "bvllm_chat --model=CKPT (--video=FILE | --image=FILE) (--prompt=TEXT | --interactive) [--frame_size=N] "
      "[--greedy] ...");
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
