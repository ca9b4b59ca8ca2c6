#include "data/tiny_vocab.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <glog/logging.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "data/utf8.h"
#include "runtime/error.h"

namespace bvllm::data {
namespace {

// A compiled PCRE2 pattern (UTF, Unicode properties), for the split and for the shape of a piece.
class Regex {
 public:
  explicit Regex(std::string_view pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                          &offset, nullptr);
    CHECK(code_ != nullptr) << "cannot compile " << pattern << " (error " << error << " at " << offset << ")";
    match_.reset(pcre2_match_data_create(1, nullptr));
    CHECK(match_ != nullptr) << "pcre2_match_data_create failed";
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // The first match at or after `pos`: {begin, end}, or {npos, npos}.
  std::pair<size_t, size_t> find(std::string_view text, size_t pos) const {
    const int rc =
        pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, match_.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return {std::string_view::npos, std::string_view::npos};
    CHECK_GE(rc, 0) << "pcre2_match failed on " << text;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_.get());
    return {ov[0], ov[1]};
  }

  bool matches_whole(std::string_view text) const {
    const auto [begin, end] = find(text, 0);
    return begin == 0 && end == text.size();
  }

 private:
  struct FreeMatch {
    void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
  };
  pcre2_code* code_ = nullptr;
  std::unique_ptr<pcre2_match_data, FreeMatch> match_;  // one thread uses a Regex at a time
};

// GPT-2's bytes_to_unicode: printable Latin-1 bytes name themselves, the others take the code
// points from 256 on, in byte order.
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> to_char{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    to_char[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return to_char;
}

std::string to_byte_level(std::string_view bytes) {
  std::string out;
  for (char c : bytes) out += byte_level_token(static_cast<uint8_t>(c));
  return out;
}

// The texts without the special tokens (each text cut at them into chunks).
std::vector<std::string> chunks_without_specials(std::span<const std::string> texts) {
  std::vector<std::string> chunks;
  for (const std::string& text : texts) {
    size_t start = 0;
    while (start <= text.size()) {
      size_t cut = std::string::npos, length = 0;
      for (std::string_view special : kTinySpecialTokens) {
        const size_t at = text.find(special, start);
        if (at < cut) cut = at, length = special.size();
      }
      chunks.push_back(text.substr(start, cut == std::string::npos ? std::string::npos : cut - start));
      if (cut == std::string::npos) break;
      start = cut + length;
    }
  }
  return chunks;
}

// Byte-level BPE over raw byte strings: (left, right) -> rank.
class Merger {
 public:
  std::vector<std::string> encode(std::string_view piece) const {
    std::vector<std::string> symbols;
    for (char c : piece) symbols.emplace_back(1, c);
    // The lowest-ranked adjacent pair, leftmost on a tie, until none merges (tokenizers'
    // Word::merge_all gives the same result).
    for (;;) {
      size_t best = symbols.size();
      size_t best_rank = 0;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto it = ranks_.find({symbols[i], symbols[i + 1]});
        if (it != ranks_.end() && (best == symbols.size() || it->second < best_rank)) best = i, best_rank = it->second;
      }
      if (best == symbols.size()) return symbols;
      symbols[best] += symbols[best + 1];
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
  }

  // Appends merges that join what encode(piece) leaves, left to right; new tokens go to `tokens`.
  void make_one_token(const std::string& piece, std::vector<std::string>& tokens, std::set<std::string>& known) {
    const std::vector<std::string> parts = encode(piece);
    std::string joined = parts[0];
    for (size_t i = 1; i < parts.size(); ++i) {
      ranks_.emplace(std::make_pair(joined, parts[i]), order_.size());
      order_.emplace_back(joined, parts[i]);
      joined += parts[i];
      if (known.insert(joined).second) tokens.push_back(joined);
    }
  }

  const std::vector<std::pair<std::string, std::string>>& order() const { return order_; }

 private:
  std::map<std::pair<std::string, std::string>, size_t> ranks_;
  std::vector<std::pair<std::string, std::string>> order_;
};

// Shortest first, then bytewise: the order the pieces get their merges in.
struct ShortFirst {
  bool operator()(const std::string& a, const std::string& b) const {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  }
};

bool is_bert_punctuation(unsigned char c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

}  // namespace

std::string byte_level_token(uint8_t b) {
  static const std::array<char32_t, 256> to_char = byte_alphabet();
  std::string out;
  utf8::append(out, to_char[b]);
  return out;
}

std::vector<std::string> qwen2_pretokenize(std::string_view text) {
  if (const auto bad = utf8::find_invalid(text))
    throw Error(str_cat("qwen2_pretokenize: invalid UTF-8 at byte ", *bad));
  thread_local const Regex split(kQwen2SplitRegex);
  // Split with behavior Isolated, as data/qwen2_tokenizer.cc does: matches and the gaps between
  // them are pieces; an empty match steps over one character.
  std::vector<std::string> pieces;
  size_t pos = 0, last = 0;
  while (pos < text.size()) {
    const auto [begin, end] = split.find(text, pos);
    if (begin == std::string_view::npos) break;
    if (end == begin) {
      pos = begin + std::max<size_t>(1, utf8::sequence_length(text, begin));
      continue;
    }
    if (begin > last) pieces.emplace_back(text.substr(last, begin - last));
    pieces.emplace_back(text.substr(begin, end - begin));
    last = pos = end;
  }
  if (last < text.size()) pieces.emplace_back(text.substr(last));
  return pieces;
}

TinyVocab build_tiny_vocab(std::span<const std::string> texts) {
  // A piece of one prefix character and letters (" red", "\"red"): the split regex's
  // [^\r\n\p{L}\p{N}]?\p{L}+ with its optional character present.
  thread_local const Regex prefixed(R"([^\r\n\p{L}\p{N}]\p{L}+)");
  std::set<std::string, ShortFirst> plain, with_prefix;
  for (const std::string& chunk : chunks_without_specials(texts)) {
    for (std::string& piece : qwen2_pretokenize(chunk)) {
      if (prefixed.matches_whole(piece)) {
        plain.insert(piece.substr(utf8::sequence_length(piece, 0)));  // the letters first
        with_prefix.insert(std::move(piece));
      } else {
        plain.insert(std::move(piece));
      }
    }
  }

  TinyVocab vocab;
  std::vector<std::string> tokens;  // raw bytes
  std::set<std::string> known;
  for (int b = 0; b < 256; ++b) {
    tokens.emplace_back(1, static_cast<char>(b));
    known.insert(tokens.back());
  }
  Merger merger;
  for (const std::string& piece : plain) merger.make_one_token(piece, tokens, known);
  for (const std::string& piece : with_prefix) merger.make_one_token(piece, tokens, known);
  for (const auto* set : {&plain, &with_prefix})
    for (const std::string& piece : *set)
      CHECK_EQ(merger.encode(piece).size(), 1u) << "piece '" << piece << "' is not one token";

  for (const std::string& token : tokens) vocab.tokens.push_back(to_byte_level(token));
  for (const auto& [left, right] : merger.order()) vocab.merges.emplace_back(to_byte_level(left), to_byte_level(right));
  return vocab;
}

std::string tiny_tokenizer_json(const TinyVocab& vocab) {
  using nlohmann::ordered_json;
  ordered_json tokens = ordered_json::object();
  for (size_t id = 0; id < vocab.tokens.size(); ++id) tokens[vocab.tokens[id]] = id;
  ordered_json merges = ordered_json::array();
  for (const auto& [left, right] : vocab.merges) merges.push_back(ordered_json::array({left, right}));
  ordered_json added = ordered_json::array();
  size_t id = vocab.tokens.size();
  for (std::string_view special : kTinySpecialTokens) {
    added.push_back({{"id", id++},
                     {"content", std::string(special)},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  const ordered_json split = {{"type", "Split"},
                              {"pattern", {{"Regex", std::string(kQwen2SplitRegex)}}},
                              {"behavior", "Isolated"},
                              {"invert", false}};
  const ordered_json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", tokens},
        {"merges", merges}}},
  };
  return root.dump(1) + "\n";
}

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  BVLLM_REQUIRE(out, path, ": cannot open for writing");
  out << text;
  out.close();
  BVLLM_REQUIRE(out, path, ": cannot write");
}

}  // namespace

int32_t write_tiny_tokenizer(const std::string& path, std::span<const std::string> texts) {
  const TinyVocab vocab = build_tiny_vocab(texts);
  write_text(path, tiny_tokenizer_json(vocab));
  return static_cast<int32_t>(vocab.tokens.size() + std::size(kTinySpecialTokens));
}

std::vector<std::string> tiny_bert_vocab(std::span<const std::string> texts) {
  std::set<std::string> words;
  for (const std::string& text : texts) {
    std::string word;
    auto flush = [&] {
      if (!word.empty()) words.insert(word);
      word.clear();
    };
    for (const char ch : text) {
      const auto c = static_cast<unsigned char>(ch);
      BVLLM_REQUIRE(c < 0x80, "tiny_bert_vocab: the text \"", text, "\" is not ASCII");
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        flush();
      } else if (c < 32 || c == 127) {
        continue;  // BERT's basic tokenizer drops control characters
      } else if (is_bert_punctuation(c)) {
        flush();
        words.insert(std::string(1, ch));
      } else {
        word += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      }
    }
    flush();
  }
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  vocab.insert(vocab.end(), words.begin(), words.end());
  return vocab;
}

int32_t write_tiny_bert_vocab(const std::string& path, std::span<const std::string> texts) {
  const std::vector<std::string> vocab = tiny_bert_vocab(texts);
  std::string text;
  for (const std::string& token : vocab) text += token + "\n";
  write_text(path, text);
  return static_cast<int32_t>(vocab.size());
}

}  // namespace bvllm::data
