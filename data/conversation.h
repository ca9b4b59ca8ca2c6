// The text side of a training sample: a stored Sample's conversation turned into the LLM's ids and
// labels for a training stage, and the question that conditions both Q-Formers. As B-VLLM's
// bvlm/train.py does it (../shared/research/bvllm.md §2.3, §2.9, §5):
//
//   stage 1 (preprocess_plain): "<video>\n{human} {gpt}", no template, no EOS; labels = ids with
//     only the placeholder masked, so the loss covers the instruction too (VideoLLaMA2's choice).
//   stage 2 (preprocess): Qwen2-Instruct's ChatML with the default system prompt; for each
//     (user, assistant) pair everything up to and including "<|im_start|>assistant\n" is masked,
//     the answer and its "<|im_end|>\n" are supervised.
//
// The media tag is cut out of the text before tokenization and replaced by one placeholder id
// (tokenizer_multimodal_token: each chunk between tags is encoded alone), -201 for a video and
// -200 for an image; a text-only sample keeps any tag-like text as plain text. The ids are
// truncated to max_length before the visual tokens are spliced in (the collator's
// input_ids[:, :model_max_length]).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/qwen2_tokenizer.h"
#include "data/sample.pb.h"

namespace bvllm::data {

// Placeholder and ignore ids, the values of layers/bvllm.h's kImageTokenId, kVideoTokenId and
// kIgnoreIndex (VideoLLaMA2's constants.py); bvllm_data does not depend on layers/.
inline constexpr int64_t kImagePlaceholder = -200;
inline constexpr int64_t kVideoPlaceholder = -201;
inline constexpr int64_t kIgnoreIndex = -100;

struct TextOptions {
  int stage = 2;              // 1: plain, 2: ChatML
  int64_t max_length = 8192;  // model_max_length: ids and labels are cut to this many
};

struct SampleText {
  std::vector<int64_t> ids;     // Qwen2 ids with exactly one placeholder for a video or image
  std::vector<int64_t> labels;  // same length, kIgnoreIndex where not supervised
  std::string question;         // for the Q-Formers (qformer_question)
};

// "<video>" for VIDEO, "<image>" for IMAGE, "" for TEXT.
std::string_view media_tag(Sample::Kind kind);
// kVideoPlaceholder, kImagePlaceholder, or 0 for TEXT (which has none).
int64_t media_placeholder(Sample::Kind kind);

// tokenizer_multimodal_token (bvlm/mm_utils.py): `text` split at every `tag`, each chunk encoded
// on its own, `placeholder` between consecutive chunks. An empty tag encodes the text whole.
std::vector<int64_t> encode_multimodal(const Qwen2Tokenizer& tokenizer, std::string_view text, std::string_view tag,
                                       int64_t placeholder);

// The Q-Formers' text (train.py's `prompt`): the first human turn that holds the sample's tag,
// with every tag removed and stripped as Python's str.strip(); "" for a text-only sample or when no
// human turn holds the tag.
std::string qformer_question(const Sample& sample);

// ids, labels and question of `sample` for options.stage. Throws bvllm::Error naming the sample's
// id for a conversation the stage cannot take: stage 1 needs a video or image sample with exactly
// two turns whose first holds the tag; stage 2 needs alternating human/gpt turns (a leading
// non-human turn is dropped, as the reference does) ending with gpt; a video or image sample must
// give exactly one placeholder, and it must survive the truncation to max_length.
SampleText tokenize_sample(const Sample& sample, const Qwen2Tokenizer& tokenizer, const TextOptions& options);

}  // namespace bvllm::data
