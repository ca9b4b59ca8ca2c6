// Inference with a trained B-VLLM, shared by bvllm_eval and bvllm_chat: a bvllm_train checkpoint
// loaded back into the model its recipe describes, a video or image file prepared as bvllm_prep
// stored it and the training loader read it, the prompts of the recipe's stage, and the
// teacher-forced greedy check of an answer.
//
//   LoadedModel m = load_trained_model("runs/tiny_stage2/checkpoints");   // the latest step
//   Tensor pixels = video_pixels("clip.mp4", media_options(m.recipe, {.frame_size = 96}));
//   Prompt p = first_turn_prompt(m.tokenizers.qwen, 2, "What colour is the object?", MediaKind::Video);
//
// Frames. The model saw, in training, frames that went through: decode at 1 fps with the short
// side resized to bvllm_prep's --frame_size (data/video_decoder.h), a JPEG round trip at
// --jpeg_quality (the shards store JPEG), uniform_frame_indices over the 1-fps frames
// (data/loader.h), then clip_preprocess at the recipe's image size, with expand2square when the
// recipe pads (data.image_pad). A file given to bvllm_chat goes through the same steps, so it
// gets the pixels bvllm_eval gets from the shards (bitwise, with the same frame size and quality).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/loader.h"
#include "layers/bvllm.h"
#include "recipes/recipe.pb.h"
#include "tools/train/model_builder.h"

namespace bvllm::train {

struct InferenceLoadOptions {
  // Replace the recipe's paths (which are relative to where bvllm_train ran): model.tokenizer
  // (a tokenizer.json) and model.qformer.bert_vocab (a vocab.txt). Empty: the recipe's.
  std::string tokenizer;
  std::string bert_vocab;
};

struct LoadedModel {
  recipes::Recipe recipe;  // the run's resolved recipe (the checkpoint's recipe.pb)
  std::string checkpoint;  // the step directory that was loaded
  int64_t step = 0;
  Tokenizers tokenizers;
  std::shared_ptr<layers::BvllmForCausalLM> model;  // every parameter from the checkpoint, eval mode
};

// `checkpoint` is a step directory, a checkpoint directory (its latest step) or a run directory
// (its checkpoints/). The model is built as the recipe says (LoRA adapters included) without
// starting weights, then every tensor of the checkpoint's model.safetensors is loaded: a tensor
// the model lacks, or a parameter the file lacks or holds in another shape, is an error naming the
// file. Errors are bvllm::Error naming the file and what was expected.
LoadedModel load_trained_model(const std::string& checkpoint, const InferenceLoadOptions& options = {});

enum class MediaKind { Video, Image };

// "<video>" or "<image>", and the placeholder id the loader puts in its place.
std::string_view media_tag(MediaKind kind);
int64_t media_placeholder(MediaKind kind);

struct MediaOptions {
  int64_t frame_size = 336;   // bvllm_prep --frame_size: short side of the stored frames (0: as decoded)
  int jpeg_quality = 90;      // bvllm_prep --jpeg_quality; 0 skips the JPEG round trip
  int64_t frames = 32;        // frames per video (recipe model.frames_per_sample)
  int image_size = 336;       // CLIP resize and crop (recipe model.vision.image_size)
  bool pad_to_square = true;  // expand2square first (recipe data.image_pad)
};

// The recipe's frames, image size and pad, with bvllm_prep's frame size and quality from `prep`.
MediaOptions media_options(const recipes::Recipe& recipe, const MediaOptions& prep = {});

// f32 [frames, 3, S, S]: the video's 1-fps frames, `frames` of them chosen by
// uniform_frame_indices, prepared as the header describes. DecodeError names the file.
Tensor video_pixels(const std::string& path, const MediaOptions& options);
// f32 [1, 3, S, S]: the image as one stored frame.
Tensor image_pixels(const std::string& path, const MediaOptions& options);

struct Prompt {
  std::vector<int64_t> ids;  // LLM ids with one placeholder (first_turn_prompt) or none
  std::string question;      // the Q-Formers' text (data/conversation.h qformer_question)
};

// The first user turn as the loader tokenizes a training sample (data/conversation.h), up to where
// the answer starts:
//   stage 2: ChatML with the default system prompt, "<video>\n{question}" as the user turn (the tag
//            moved to the front as the reference's preprocess_multimodal does), and the generation
//            prompt "<|im_start|>assistant\n";
//   stage 1: the plain "<video>\n{question}" (the caption follows after a space, no template).
// `question` may hold the tag already; the Q-Former question is the text without it, stripped.
Prompt first_turn_prompt(const Qwen2Tokenizer& tokenizer, int stage, std::string_view question, MediaKind kind);

// The ids that continue a stage-2 chat after an answer whose last token is NOT yet in the KV cache
// (layers/generate.h leaves it out): that token, <|im_end|> unless it was that token, then
// "\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", as render_chatml of the
// whole conversation tokenizes (special tokens cut the text, so the pieces tokenize alone).
std::vector<int64_t> next_turn_ids(const Qwen2Tokenizer& tokenizer, int64_t last_token, std::string_view question);

// <|im_end|> and <|endoftext|> of the tokenizer: where generation stops and an answer ends.
std::vector<int64_t> end_token_ids(const Qwen2Tokenizer& tokenizer);

// A loaded sample (data/loader.h) as the model's input.
layers::BvllmSample model_sample(const data::LoadedSample& sample);

// Teacher-forced greedy check of one sample's answers: logits [L, vocab] (row t predicts token
// t + 1) and labels [L] (-100 where not supervised). Compared: argmax(logits[t - 1]) (the lowest id
// among equal maxima, as generate's greedy choice) against labels[t] at every supervised t, except
// the positions after an end token within a run of supervised labels (the "\n" after <|im_end|>,
// which generation never produces since it stops at the end token). So `correct` holds exactly
// when greedy generation from the prompt before the answer produces the answer and its end token.
struct AnswerCheck {
  bool correct = false;
  std::vector<int64_t> expected;   // the compared labels, in order
  std::vector<int64_t> predicted;  // the argmax at each of them
  int64_t first_wrong = -1;        // index into expected of the first mismatch, -1 when none
  int64_t answer_start = -1;       // the position t of the first compared label, -1 when none
};
AnswerCheck check_answer(const Tensor& logits, const Tensor& labels, std::span<const int64_t> end_ids);

}  // namespace bvllm::train
