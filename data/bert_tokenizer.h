// The BERT WordPiece tokenizer of B-VLLM's text conditioning: Hugging Face's slow
// BertTokenizer("bert-base-uncased", truncation_side="left") with the special token [DEC] added
// (id 30522, so 30523 ids), called with padding="longest", truncation=True, max_length=256
// (../shared/research/bvllm.md §2.3). The question goes to both Q-Formers as these ids.
//
// encode(text), in the order of transformers' tokenization_bert.py:
//   1. the special tokens [CLS] [SEP] [PAD] [UNK] [MASK] [DEC] are cut out of the raw text first
//      (case-sensitive), so they are never split; the pieces between them go through 2-5;
//   2. BasicTokenizer, uncased: drop U+0000, U+FFFD and every character of category C* except
//      \t \n \r, turn whitespace (space, \t \n \r, Zs) into spaces; put spaces around CJK
//      ideographs (BERT's ranges); split on whitespace;
//   3. each word: lower-case each character, decompose (NFD) and drop the nonspacing marks (Mn),
//      then split before and after every punctuation character (ASCII 33-47, 58-64, 91-96,
//      123-126, and Unicode P*);
//   4. WordPiece on each piece: greedy longest-match-first from the left, pieces after the first
//      prefixed with "##"; a word longer than 100 characters, or with a position where no piece
//      matches, becomes one [UNK];
//   5. [CLS] ids [SEP], keeping the LAST max_length - 2 ids when there are more (left
//      truncation: the end of a long question, where the question usually is, survives).
// Unicode properties come from utf8proc. Where the Rust tokenizers library (BertTokenizerFast)
// differs from the Python class, this follows Python: unassigned code points (Cn) are dropped.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm {

// A right-padded batch: ids [B, L] i64 with [PAD] after each text's [SEP], and mask [B, L] i64
// (1 on the text's ids, 0 on padding); L is the longest text's length (padding="longest").
struct BertBatch {
  Tensor ids;
  Tensor mask;
};

class BertTokenizer {
 public:
  static constexpr int kDefaultMaxLength = 256;
  static constexpr int kMaxInputCharsPerWord = 100;
  static constexpr std::string_view kDecToken = "[DEC]";

  // A vocab.txt: one token per line, the id is the line number (from 0); the file must hold
  // [CLS], [SEP], [PAD] and [UNK]. [DEC] gets the next id when the file lacks it (30522 for
  // bert-base-uncased). Throws bvllm::Error naming the file (and the line) for a missing file,
  // an empty or duplicate token, invalid UTF-8, CRLF line ends, a missing required token, or
  // max_length < 2.
  static BertTokenizer from_vocab_file(const std::string& path, int max_length = kDefaultMaxLength);
  // The same from the tokens themselves (id = index); `source` names them in errors.
  static BertTokenizer from_tokens(std::vector<std::string> tokens, const std::string& source,
                                   int max_length = kDefaultMaxLength);

  // The WordPiece ids of UTF-8 `text`, without [CLS]/[SEP] and without truncation. Throws
  // bvllm::Error for invalid UTF-8, naming the byte offset. Thread-safe.
  std::vector<int32_t> tokenize(std::string_view text) const;
  // [CLS] tokenize(text) [SEP], left-truncated to max_length ids.
  std::vector<int32_t> encode(std::string_view text) const;
  // encode() of each text, right-padded with [PAD] to the longest (B >= 1).
  BertBatch encode_batch(std::span<const std::string> texts) const;

  // For debugging, as BertTokenizer.decode: the tokens joined by spaces with "##" pieces glued to
  // the previous one, then transformers' clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...).
  // skip_special_tokens leaves out [CLS] [SEP] [PAD] [UNK] [MASK] [DEC]. Throws for an unknown id.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws for an unknown id
  bool is_special(int32_t id) const;

  int32_t vocab_size() const;  // [DEC] included: 30523 for bert-base-uncased
  int32_t cls_id() const;
  int32_t sep_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  int32_t dec_id() const;
  int max_length() const;
  const std::string& source() const;  // the file it was loaded from

 private:
  struct Impl;
  explicit BertTokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable after load
};

}  // namespace bvllm
