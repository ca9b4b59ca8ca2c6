// The Qwen2 tokenizer: byte-level BPE read from a Hugging Face tokenizer.json, giving the ids that
// the tokenizers library (Qwen2TokenizerFast) gives. Format facts and sources:
// ../shared/research/models-formats.md §3.
//
// encode(text), in the order of the Hugging Face pipeline:
//   1. added tokens (<|im_start|>, ...) are cut out of the raw text first, leftmost-longest, so
//      they are never split (those marked "normalized": true are matched after step 2);
//   2. each remaining piece is NFC-normalized (normalizer {"type": "NFC"});
//   3. split by the pre-tokenizer's regex (Split, behavior Isolated: matches and the gaps between
//      them are pieces), read from the file and run by PCRE2 with Unicode properties;
//   4. each piece's UTF-8 bytes are BPE-merged: starting from one symbol per byte (the GPT-2
//      byte-to-unicode alphabet names the byte tokens in the vocab), repeatedly merge the adjacent
//      pair of lowest merge rank, leftmost first, as tokenizers' Word::merge_all does.
// decode(ids) concatenates the tokens' bytes and decodes them as UTF-8 with errors="replace".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bvllm {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;     // skipped by decode(..., skip_special_tokens = true)
  bool normalized = false;  // matched on NFC text instead of raw text
  bool lstrip = false;      // absorbs the whitespace on its left
  bool rstrip = false;      // absorbs the whitespace on its right
};

class Qwen2Tokenizer {
 public:
  // `path` is a tokenizer.json or a directory holding one (a Hugging Face model directory).
  // Throws bvllm::Error naming the file and the field for anything missing or malformed, and for
  // pipelines other than the Qwen2 one (e.g. another normalizer or pre-tokenizer).
  static Qwen2Tokenizer load(const std::string& path);
  // The same from the JSON text; `source` names it in errors.
  static Qwen2Tokenizer from_json(std::string_view json_text, const std::string& source);

  // Token ids of UTF-8 `text` (no BOS/EOS: Qwen2 adds none). Throws bvllm::Error for invalid
  // UTF-8, naming the byte offset. Thread-safe.
  std::vector<int32_t> encode(std::string_view text) const;

  // UTF-8 text of `ids`: ill-formed byte sequences (e.g. a character cut in two) become U+FFFD;
  // added tokens are written as their content. Throws bvllm::Error for an unknown id.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The token's string as the file writes it (byte-level alphabet for vocab tokens), and back.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws for an unknown id

  // One past the largest id, vocab and added tokens together (151646 for Qwen2-Instruct; the
  // model's embedding may be larger, e.g. 152064).
  int32_t vocab_size() const;
  const std::vector<AddedToken>& added_tokens() const;
  bool is_special(int32_t id) const;

  // <|endoftext|> (pad), <|im_start|> and <|im_end|> (eos of the Instruct models); throw
  // bvllm::Error naming the file when the tokenizer has no such token.
  int32_t endoftext_id() const;
  int32_t im_start_id() const;
  int32_t im_end_id() const;

  const std::string& source() const;  // the file it was loaded from
  // True when the split regex runs through PCRE2's JIT compiler (false: the interpreter).
  bool regex_jit() const;

 private:
  struct Impl;
  explicit Qwen2Tokenizer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // immutable after load except the internally locked word cache
};

}  // namespace bvllm
