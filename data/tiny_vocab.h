// Small vocabularies made from a dataset's own texts, for tiny models trained on it (the synthetic
// data of bvllm_synth, data/synthetic.h): a byte-level BPE tokenizer.json that Qwen2Tokenizer
// (data/qwen2_tokenizer.h) loads, and a BERT WordPiece vocab.txt for BertTokenizer
// (data/bert_tokenizer.h).
//
// The tokenizer keeps the Qwen2 pipeline (NFC, the Qwen2 split regex, byte-level BPE,
// ../shared/research/models-formats.md §3) and only shrinks the vocabulary: the 256 byte tokens
// (ids 0-255, id = byte value, named in GPT-2's byte-to-unicode alphabet), then the tokens of a
// merge list built so that every piece the pre-tokenizer cuts from the given texts is one token,
// then the added special tokens <|endoftext|>, <|im_start|> and <|im_end|>. Any other text still
// encodes, byte by byte where no merge applies, and decodes back to itself.
//
// How the merges are chosen: the pieces are taken shortest first; a piece that the merges so far
// leave as several tokens gets new merges that join those tokens left to right. New merges are
// appended (the highest ranks), and a merge of higher rank than every merge of a finished word can
// never fire inside it (BPE always applies the lowest-ranked applicable pair, and some lower one
// applies at every step until the word is one token), so earlier pieces stay one token. A piece
// made of a prefix character and letters (" red") is built as the prefix plus its letters' token
// (letters first, all of them before any prefixed piece), so "red" and " red" cost one token more
// than "red" alone.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bvllm::data {

// Qwen2's pre-tokenizer regex (Split, behavior Isolated), as its tokenizer.json writes it.
inline constexpr std::string_view kQwen2SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The added tokens, in id order after the vocabulary.
inline constexpr std::string_view kTinySpecialTokens[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

// GPT-2's bytes_to_unicode: the vocabulary string (UTF-8) that names byte `b` (' ' -> "Ġ").
std::string byte_level_token(uint8_t b);

// The pieces Qwen2's pre-tokenizer cuts UTF-8 `text` into (kQwen2SplitRegex, Isolated: matches and
// the gaps between them). The text is taken as it is (no NFC, no special tokens cut out). Throws
// bvllm::Error for invalid UTF-8.
std::vector<std::string> qwen2_pretokenize(std::string_view text);

struct TinyVocab {
  std::vector<std::string> tokens{};                          // id -> token, byte-level alphabet
  std::vector<std::pair<std::string, std::string>> merges{};  // rank order
};

// The byte tokens plus the merges that make every piece of `texts` one token (see above). The
// special tokens are cut out of each text first, as the tokenizer does. Deterministic: the same
// set of pieces gives the same vocabulary whatever the order of the texts.
TinyVocab build_tiny_vocab(std::span<const std::string> texts);

// The tokenizer.json text of `vocab`: the Qwen2 pipeline, the special tokens with ids
// tokens.size(), +1, +2.
std::string tiny_tokenizer_json(const TinyVocab& vocab);

// build_tiny_vocab(texts) written as a tokenizer.json at `path`; returns the number of ids
// (vocabulary and special tokens). Throws bvllm::Error naming the path when it cannot be written.
int32_t write_tiny_tokenizer(const std::string& path, std::span<const std::string> texts);

// A BERT vocab for ASCII `texts`: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then every word and
// punctuation character that BERT's uncased basic tokenizer cuts from the texts (lower-cased,
// split at whitespace and ASCII punctuation), sorted. BertTokenizer adds [DEC] after them. Throws
// bvllm::Error for a non-ASCII text (BERT's Unicode rules are not reproduced here).
std::vector<std::string> tiny_bert_vocab(std::span<const std::string> texts);

// tiny_bert_vocab(texts) as a vocab.txt (one token per line); returns the number of lines.
int32_t write_tiny_bert_vocab(const std::string& path, std::span<const std::string> texts);

}  // namespace bvllm::data
