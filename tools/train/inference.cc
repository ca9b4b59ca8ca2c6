#include "tools/train/inference.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "data/chat_template.h"
#include "data/clip_image.h"
#include "data/conversation.h"
#include "data/jpeg.h"
#include "data/utf8.h"
#include "data/video_decoder.h"
#include "parallel/checkpoint.h"
#include "recipes/recipe.h"
#include "runtime/error.h"
#include "runtime/ops.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;

// A run directory (RUN_DIR/checkpoints holds the steps) is accepted for its checkpoint directory.
std::string checkpoint_path(const std::string& path) {
  const fs::path p(path);
  if (!fs::exists(p / "manifest.pb") && !fs::exists(p / "latest") && fs::is_directory(p / "checkpoints"))
    return (p / "checkpoints").string();
  return path;
}

// The frames as the loader hands them to the model: f32 [T, 3, S, S].
Tensor prepare_frames(const data::DecodedVideo& decoded, const std::vector<int64_t>& picks, const MediaOptions& o,
                      const std::string& path) {
  ClipImageOptions clip;
  clip.size = clip.crop = o.image_size;
  clip.mode = o.pad_to_square ? ClipImageOptions::Mode::Pad : ClipImageOptions::Mode::Square;
  std::vector<Tensor> frames;
  for (size_t i = 0; i < picks.size(); ++i) {
    if (i > 0 && picks[i] == picks[i - 1]) {  // fewer 1-fps frames than asked: repeats
      frames.push_back(frames.back());
      continue;
    }
    Tensor rgb = decoded.frames.at(static_cast<size_t>(picks[i])).rgb;
    if (o.jpeg_quality > 0)
      rgb = data::decode_jpeg(data::encode_jpeg(rgb, o.jpeg_quality), str_cat(path, " frame ", picks[i]));
    frames.push_back(clip_preprocess(rgb, clip));
  }
  return ops::stack(frames, 0);
}

void check_media_options(const MediaOptions& o) {
  BVLLM_REQUIRE(o.frame_size >= 0, "frame size must be >= 0 (bvllm_prep --frame_size), got ", o.frame_size);
  BVLLM_REQUIRE(o.jpeg_quality >= 0 && o.jpeg_quality <= 100, "JPEG quality must be in [0, 100], got ", o.jpeg_quality);
  BVLLM_REQUIRE(o.frames >= 1, "frames per video must be >= 1, got ", o.frames);
  BVLLM_REQUIRE(o.image_size >= 1, "image size must be >= 1, got ", o.image_size);
}

int64_t special_id(const Qwen2Tokenizer& tokenizer, std::string_view content) {
  for (const AddedToken& added : tokenizer.added_tokens())
    if (added.content == content) return added.id;
  return -1;
}

std::vector<int64_t> encode(const Qwen2Tokenizer& tokenizer, std::string_view text) {
  const std::vector<int32_t> ids = tokenizer.encode(text);
  return {ids.begin(), ids.end()};
}

}  // namespace

LoadedModel load_trained_model(const std::string& checkpoint, const InferenceLoadOptions& options) {
  const std::string path = checkpoint_path(checkpoint);
  const std::string step_dir =
      fs::exists(fs::path(path) / "manifest.pb") ? path : parallel::latest_checkpoint(path).value_or(std::string());
  BVLLM_REQUIRE(!step_dir.empty(), checkpoint,
                ": no checkpoint (expected a step directory with manifest.pb, a checkpoint directory with "
                "complete steps, or a run directory with checkpoints/)");
  parallel::Checkpoint saved = parallel::load_checkpoint(step_dir);

  const std::string recipe_file = (fs::path(step_dir) / "recipe.pb").string();
  auto text = saved.texts.find("recipe.pb");
  BVLLM_REQUIRE(text != saved.texts.end(), recipe_file,
                ": missing (a bvllm_train checkpoint holds the run's resolved recipe)");
  recipes::Recipe recipe = recipes::parse_recipe(text->second, recipe_file);
  if (!options.tokenizer.empty()) recipe.mutable_model()->set_tokenizer(options.tokenizer);
  if (!options.bert_vocab.empty()) recipe.mutable_model()->mutable_qformer()->set_bert_vocab(options.bert_vocab);

  Tokenizers tokenizers = load_tokenizers(recipe, recipe_file);
  BuiltModel built = build_model(recipe, recipe_file, tokenizers.bert.vocab_size(), {.load_weights = false});
  const int64_t llm_vocab = built.model->config().vocab_size;
  BVLLM_REQUIRE(tokenizers.qwen.vocab_size() <= llm_vocab, tokenizers.qwen.source(), ": its ",
                tokenizers.qwen.vocab_size(), " ids do not fit the LLM's vocabulary of ", llm_vocab, " (", recipe_file,
                ")");

  const std::string model_file = (fs::path(step_dir) / "model.safetensors").string();
  auto tensors = saved.tensors.find("model");
  BVLLM_REQUIRE(tensors != saved.tensors.end(), model_file, ": missing (the checkpoint has no model tensors)");
  const std::map<std::string, Tensor> state(tensors->second.begin(), tensors->second.end());
  // Exact: a missing or an extra tensor means the recipe.pb and the weights disagree (another
  // LoRA rank or target, another model size), which would run a model other than the trained one.
  built.model->load_state_dict(state, {.source = model_file, .copy = false});
  built.model->set_requires_grad(false);
  built.model->eval();
  return LoadedModel{.recipe = std::move(recipe),
                     .checkpoint = step_dir,
                     .step = saved.step,
                     .tokenizers = std::move(tokenizers),
                     .model = std::move(built.model)};
}

std::string_view media_tag(MediaKind kind) { return kind == MediaKind::Video ? "<video>" : "<image>"; }

int64_t media_placeholder(MediaKind kind) {
  return kind == MediaKind::Video ? data::kVideoPlaceholder : data::kImagePlaceholder;
}

MediaOptions media_options(const recipes::Recipe& recipe, const MediaOptions& prep) {
  MediaOptions o = prep;
  o.frames = recipe.model().frames_per_sample();
  o.image_size = static_cast<int>(recipe.model().vision().image_size());
  o.pad_to_square = recipe.data().image_pad();
  return o;
}

Tensor video_pixels(const std::string& path, const MediaOptions& options) {
  check_media_options(options);
  const data::DecodedVideo decoded =
      data::decode_video(path, {.fps = 1.0, .threads = 1, .short_side = options.frame_size});
  const std::vector<int64_t> picks =
      data::uniform_frame_indices(static_cast<int64_t>(decoded.frames.size()), options.frames);
  return prepare_frames(decoded, picks, options, path);
}

Tensor image_pixels(const std::string& path, const MediaOptions& options) {
  check_media_options(options);
  const data::DecodedVideo decoded = data::decode_image(path, {.threads = 1, .short_side = options.frame_size});
  return prepare_frames(decoded, {0}, options, path);
}

Prompt first_turn_prompt(const Qwen2Tokenizer& tokenizer, int stage, std::string_view question, MediaKind kind) {
  BVLLM_REQUIRE(stage == 1 || stage == 2, "the training stage must be 1 or 2, got ", stage);
  const std::string_view tag = media_tag(kind);
  BVLLM_REQUIRE(!utf8::find_invalid(question), "the question is not valid UTF-8");
  // As the loader's human turns: the tag on a line of its own in front (media_to_front), also when
  // the question holds it somewhere else.
  const std::string turn = media_to_front(str_cat(tag, question), tag);
  Prompt prompt;
  std::string rest;  // qformer_question: the turn without its tags, stripped
  size_t pos = 0;
  for (size_t hit; (hit = turn.find(tag, pos)) != std::string::npos; pos = hit + tag.size())
    rest.append(turn, pos, hit - pos);
  rest.append(turn, pos);
  prompt.question = std::string(utf8::strip_python(rest));
  std::string text = turn;
  if (stage == 2) {
    const std::vector<ChatMessage> messages = {{"system", std::string(kQwen2DefaultSystemPrompt)}, {"user", turn}};
    text = render_chatml(messages, /*add_generation_prompt=*/true);
  }
  prompt.ids = data::encode_multimodal(tokenizer, text, tag, media_placeholder(kind));
  return prompt;
}

std::vector<int64_t> next_turn_ids(const Qwen2Tokenizer& tokenizer, int64_t last_token, std::string_view question) {
  const int64_t im_end = special_id(tokenizer, "<|im_end|>");
  BVLLM_REQUIRE(im_end >= 0, tokenizer.source(), ": no <|im_end|> token (a stage-2 chat needs ChatML's tokens)");
  // The ChatML of one more user turn with the generation prompt: what render_chatml adds to a
  // conversation that ends with an assistant turn.
  const std::vector<ChatMessage> before = {{"system", ""}};
  const std::vector<ChatMessage> after = {{"system", ""}, {"user", std::string(question)}};
  const std::string head = render_chatml(before, false);
  const std::string turn = render_chatml(after, true).substr(head.size());
  std::vector<int64_t> ids = {last_token};
  if (last_token != im_end) ids.push_back(im_end);
  const std::vector<int64_t> rest = encode(tokenizer, "\n" + turn);
  ids.insert(ids.end(), rest.begin(), rest.end());
  return ids;
}

std::vector<int64_t> end_token_ids(const Qwen2Tokenizer& tokenizer) {
  std::vector<int64_t> ids;
  for (std::string_view t : {"<|im_end|>", "<|endoftext|>"})
    if (const int64_t id = special_id(tokenizer, t); id >= 0) ids.push_back(id);
  return ids;
}

layers::BvllmSample model_sample(const data::LoadedSample& sample) {
  layers::BvllmSample s;
  s.ids = sample.ids;
  s.labels = sample.labels;
  s.pixels = sample.pixels;
  s.bert_ids = sample.bert_ids;
  s.bert_mask = sample.bert_mask;
  return s;
}

AnswerCheck check_answer(const Tensor& logits, const Tensor& labels, std::span<const int64_t> end_ids) {
  BVLLM_REQUIRE(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
                "check_answer: logits must be [L, vocab] and labels [L], got ", shape_str(logits.shape()), " and ",
                shape_str(labels.shape()));
  const std::vector<int64_t> target = labels.to(DType::I64).to(Device::cpu()).to_vector<int64_t>();
  const Tensor scores = logits.to(DType::F32).to(Device::cpu()).contiguous();
  const int64_t vocab = scores.size(1);
  const float* rows = scores.data<float>();
  AnswerCheck check;
  bool ended = false;  // an end token was compared in the current run of supervised labels
  for (size_t t = 1; t < target.size(); ++t) {
    if (target[t] == data::kIgnoreIndex) {
      ended = false;
      continue;
    }
    if (ended) continue;
    const float* row = rows + static_cast<int64_t>(t - 1) * vocab;
    const int64_t argmax = std::max_element(row, row + vocab) - row;  // the first maximum
    if (check.answer_start < 0) check.answer_start = static_cast<int64_t>(t);
    if (argmax != target[t] && check.first_wrong < 0) check.first_wrong = static_cast<int64_t>(check.expected.size());
    check.expected.push_back(target[t]);
    check.predicted.push_back(argmax);
    ended = std::find(end_ids.begin(), end_ids.end(), target[t]) != end_ids.end();
  }
  check.correct = !check.expected.empty() && check.first_wrong < 0;
  return check;
}

}  // namespace bvllm::train
