#include "data/bert_tokenizer.h"

#include <utf8proc.h>  // defines: utf8proc_category, utf8proc_tolower, utf8proc_map, UTF8PROC_DECOMPOSE

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "data/utf8.h"
#include "runtime/error.h"

namespace bvllm {

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// The tokens BertTokenizer never splits (all_special_tokens with [DEC] as bos_token).
constexpr std::array<std::string_view, 6> kSpecialTokens = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[DEC]"};
// The ones bert-base-uncased's vocab.txt must hold ([MASK] is optional here; [DEC] is added).
constexpr std::array<std::string_view, 4> kRequiredTokens = {"[CLS]", "[SEP]", "[PAD]", "[UNK]"};

int32_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

// _is_control: \t \n \r count as whitespace; everything else of category C* (Cc, Cf, Cs, Co and
// unassigned Cn) is dropped.
bool is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  switch (category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN: return true;
    default: return false;
  }
}

// _is_punctuation: ASCII non-alphanumerics (so $ + < = > ^ ` | ~ too) and Unicode P*.
bool is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  switch (category(c)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: return true;
    default: return false;
  }
}

// _is_chinese_char: the CJK Unified Ideographs blocks (not kana or hangul, which BERT treats as
// letters).
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open (expected a BERT vocab.txt, one token per line)");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  BVLLM_REQUIRE(!in.bad(), path, ": read error");
  return buffer.str();
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t start = 0;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, start)) {
    out.append(s, start, pos - start);
    out.append(to);
    start = pos + from.size();
  }
  out.append(s, start, std::string::npos);
  s = std::move(out);
}

}  // namespace

struct BertTokenizer::Impl {
  std::string source;
  int max_length = kDefaultMaxLength;
  std::vector<std::string> tokens;  // by id, [DEC] included
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;
  std::vector<std::pair<std::string_view, int32_t>> specials;  // present in the vocab
  std::vector<bool> special;                                   // by id
  int32_t cls = 0, sep = 0, pad = 0, unk = 0, dec = 0;

  int32_t id_of(std::string_view token) const { return vocab.find(token)->second; }

  void tokenize_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void tokenize_word(std::string_view word, std::vector<int32_t>& out) const;
  void wordpiece(std::string_view word, std::vector<int32_t>& out) const;
};

// BasicTokenizer._clean_text, _tokenize_chinese_chars and whitespace_tokenize in one pass: the
// words between whitespace, with every CJK ideograph a word of its own. Python's str.split() also
// splits at U+2028/U+2029, which _clean_text keeps, so the test is Python's isspace().
void BertTokenizer::Impl::tokenize_piece(std::string_view piece, std::vector<int32_t>& out) const {
  std::string word;
  auto flush = [&] {
    if (!word.empty()) tokenize_word(word, out);
    word.clear();
  };
  for (size_t i = 0; i < piece.size();) {
    const size_t n = utf8::sequence_length(piece, i);
    const char32_t c = utf8::code_point_at(piece, i);
    const std::string_view bytes = piece.substr(i, n);
    i += n;
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (utf8::is_python_space(c)) {
      flush();
    } else if (is_chinese_char(c)) {
      flush();
      word = bytes;
      flush();
    } else {
      word += bytes;
    }
  }
  flush();
}

// One whitespace-separated word: lower-case (character by character, as the do_lower_case pass of
// PreTrainedTokenizer.tokenize does, so no final-sigma rule), NFD, drop Mn marks
// (_run_strip_accents), then split around punctuation (_run_split_on_punc) and WordPiece each
// piece. The Python code also NFC-normalizes before lower-casing; that cannot change the result,
// since NFD follows and NFC/NFD are canonically equivalent.
void BertTokenizer::Impl::tokenize_word(std::string_view word, std::vector<int32_t>& out) const {
  std::string lowered;
  lowered.reserve(word.size());
  for (size_t i = 0; i < word.size(); i += utf8::sequence_length(word, i))
    utf8::append(lowered,
                 static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(utf8::code_point_at(word, i)))));

  std::string decomposed;
  if (is_ascii(lowered)) {
    decomposed = std::move(lowered);
  } else {
    utf8proc_uint8_t* nfd = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(lowered.data()),
                                            static_cast<utf8proc_ssize_t>(lowered.size()), &nfd,
                                            static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE));
    if (n < 0) throw Error(str_cat("BertTokenizer: NFD normalization failed: ", utf8proc_errmsg(n)));
    decomposed.assign(reinterpret_cast<const char*>(nfd), static_cast<size_t>(n));
    std::free(nfd);
  }

  std::string piece;
  for (size_t i = 0; i < decomposed.size();) {
    const size_t n = utf8::sequence_length(decomposed, i);
    const char32_t c = utf8::code_point_at(decomposed, i);
    const std::string_view bytes = std::string_view(decomposed).substr(i, n);
    i += n;
    if (category(c) == UTF8PROC_CATEGORY_MN) continue;
    if (is_punctuation(c)) {
      if (!piece.empty()) wordpiece(piece, out);
      piece.clear();
      wordpiece(bytes, out);
    } else {
      piece += bytes;
    }
  }
  if (!piece.empty()) wordpiece(piece, out);
}

// WordpieceTokenizer.tokenize on one word: the longest vocab entry that starts the rest of the
// word ("##"-prefixed after the first piece), repeatedly; the whole word is [UNK] when it is
// longer than 100 characters or some position has no entry.
void BertTokenizer::Impl::wordpiece(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<size_t> bounds;  // byte offset of each character, then the end
  for (size_t i = 0; i < word.size(); i += utf8::sequence_length(word, i)) bounds.push_back(i);
  const size_t chars = bounds.size();
  bounds.push_back(word.size());
  if (chars > static_cast<size_t>(kMaxInputCharsPerWord)) {
    out.push_back(unk);
    return;
  }
  const size_t first = out.size();
  std::string candidate;
  for (size_t start = 0; start < chars;) {
    size_t end = chars;
    int32_t id = -1;
    for (; end > start; --end) {
      candidate.assign(start > 0 ? "##" : "");
      candidate.append(word.substr(bounds[start], bounds[end] - bounds[start]));
      if (const auto it = vocab.find(candidate); it != vocab.end()) {
        id = it->second;
        break;
      }
    }
    if (id < 0) {
      out.resize(first);
      out.push_back(unk);
      return;
    }
    out.push_back(id);
    start = end;
  }
}

// --- loading -------------------------------------------------------------------------------------

BertTokenizer::BertTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

BertTokenizer BertTokenizer::from_vocab_file(const std::string& path, int max_length) {
  const std::string text = read_file(path);
  std::vector<std::string> tokens;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t end = text.find('\n', line_start);
    if (end == std::string::npos) end = text.size();
    std::string_view line = std::string_view(text).substr(line_start, end - line_start);
    const size_t line_no = tokens.size() + 1;
    BVLLM_REQUIRE(line.empty() || line.back() != '\r', path, ":", line_no,
                  ": the line ends with \\r (CRLF line ends; a vocab.txt has one token per \\n-terminated line)");
    if (const auto bad = utf8::find_invalid(line))
      throw Error(str_cat(path, ":", line_no, ": not valid UTF-8 at byte ", *bad, " of the line"));
    tokens.emplace_back(line);
    line_start = end + 1;
  }
  return from_tokens(std::move(tokens), path, max_length);
}

BertTokenizer BertTokenizer::from_tokens(std::vector<std::string> tokens, const std::string& source, int max_length) {
  BVLLM_REQUIRE(!tokens.empty(), source, ": no tokens (expected a BERT vocab.txt, one token per line)");
  BVLLM_REQUIRE(max_length >= 2, source, ": max_length ", max_length, " leaves no room for [CLS] and [SEP]");
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  impl->max_length = max_length;
  impl->vocab.reserve(tokens.size() + 1);
  for (size_t id = 0; id < tokens.size(); ++id) {
    // Errors count lines from 1, as editors do; the id is the line number minus one.
    BVLLM_REQUIRE(!tokens[id].empty(), source, ":", id + 1, ": empty token (id ", id, ")");
    const auto [it, inserted] = impl->vocab.emplace(tokens[id], static_cast<int32_t>(id));
    BVLLM_REQUIRE(inserted, source, ":", id + 1, ": duplicate token '", tokens[id], "' (id ", id, "), already on line ",
                  it->second + 1, " (id ", it->second, ")");
  }
  for (const std::string_view required : kRequiredTokens)
    BVLLM_REQUIRE(impl->vocab.contains(required), source, ": has no ", required, " token (a BERT vocab.txt holds ",
                  "[PAD], [UNK], [CLS] and [SEP])");
  if (!impl->vocab.contains(kDecToken)) {
    impl->vocab.emplace(std::string(kDecToken), static_cast<int32_t>(tokens.size()));
    tokens.emplace_back(kDecToken);
  }
  impl->tokens = std::move(tokens);
  impl->special.assign(impl->tokens.size(), false);
  for (const std::string_view token : kSpecialTokens) {
    const auto it = impl->vocab.find(token);
    if (it == impl->vocab.end()) continue;  // [MASK]: not needed here
    impl->specials.emplace_back(token, it->second);
    impl->special[it->second] = true;
  }
  impl->cls = impl->id_of("[CLS]");
  impl->sep = impl->id_of("[SEP]");
  impl->pad = impl->id_of("[PAD]");
  impl->unk = impl->id_of("[UNK]");
  impl->dec = impl->id_of(kDecToken);
  return BertTokenizer(std::move(impl));
}

// --- encoding ------------------------------------------------------------------------------------

std::vector<int32_t> BertTokenizer::tokenize(std::string_view text) const {
  if (const auto bad = utf8::find_invalid(text))
    throw Error(str_cat("BertTokenizer::tokenize: the text is not valid UTF-8 at byte ", *bad));
  const Impl& impl = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 4);
  // Special tokens are cut out of the raw text first (the added-tokens trie of
  // PreTrainedTokenizer.tokenize); none of them is a prefix of another, so the first match wins.
  size_t gap = 0;
  for (size_t i = text.find('['); i != std::string_view::npos; i = text.find('[', i)) {
    const auto match = std::find_if(impl.specials.begin(), impl.specials.end(),
                                    [&](const auto& special) { return text.substr(i).starts_with(special.first); });
    if (match == impl.specials.end()) {
      ++i;
      continue;
    }
    impl.tokenize_piece(text.substr(gap, i - gap), out);
    out.push_back(match->second);
    gap = i = i + match->first.size();
  }
  impl.tokenize_piece(text.substr(gap), out);
  return out;
}

std::vector<int32_t> BertTokenizer::encode(std::string_view text) const {
  const std::vector<int32_t> ids = tokenize(text);
  // truncation_side="left": truncate_sequences drops the first len + 2 - max_length ids.
  const size_t keep = std::min(ids.size(), static_cast<size_t>(impl_->max_length - 2));
  std::vector<int32_t> out;
  out.reserve(keep + 2);
  out.push_back(impl_->cls);
  out.insert(out.end(), ids.end() - static_cast<std::ptrdiff_t>(keep), ids.end());
  out.push_back(impl_->sep);
  return out;
}

BertBatch BertTokenizer::encode_batch(std::span<const std::string> texts) const {
  BVLLM_REQUIRE(!texts.empty(), "BertTokenizer::encode_batch: no texts");
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(texts.size());
  size_t longest = 0;
  for (const std::string& text : texts) {
    rows.push_back(encode(text));
    longest = std::max(longest, rows.back().size());
  }
  const auto batch = static_cast<int64_t>(texts.size()), length = static_cast<int64_t>(longest);
  BertBatch out{Tensor::empty({batch, length}, DType::I64), Tensor::empty({batch, length}, DType::I64)};
  int64_t* ids = out.ids.data<int64_t>();
  int64_t* mask = out.mask.data<int64_t>();
  for (size_t b = 0; b < rows.size(); ++b) {
    for (size_t t = 0; t < longest; ++t) {
      const bool real = t < rows[b].size();
      ids[b * longest + t] = real ? rows[b][t] : impl_->pad;
      mask[b * longest + t] = real ? 1 : 0;
    }
  }
  return out;
}

// --- decoding and lookups ------------------------------------------------------------------------

std::string BertTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  // convert_tokens_to_string: " ".join(tokens).replace(" ##", "").strip(), then
  // clean_up_tokenization (clean_up_tokenization_spaces is on for BertTokenizer).
  std::string text;
  for (const int32_t id : ids) {
    const std::string& token = id_to_token(id);
    if (skip_special_tokens && impl_->special[id]) continue;
    if (!text.empty()) text += ' ';
    text += token;
  }
  replace_all(text, " ##", "");
  text = std::string(utf8::strip_python(text));
  for (const auto& [from, to] : std::initializer_list<std::pair<std::string_view, std::string_view>>{{" .", "."},
                                                                                                     {" ?", "?"},
                                                                                                     {" !", "!"},
                                                                                                     {" ,", ","},
                                                                                                     {" ' ", "'"},
                                                                                                     {" n't", "n't"},
                                                                                                     {" 'm", "'m"},
                                                                                                     {" 's", "'s"},
                                                                                                     {" 've", "'ve"},
                                                                                                     {" 're", "'re"}})
    replace_all(text, from, to);
  return text;
}

std::optional<int32_t> BertTokenizer::token_to_id(std::string_view token) const {
  const auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

const std::string& BertTokenizer::id_to_token(int32_t id) const {
  BVLLM_REQUIRE(id >= 0 && static_cast<size_t>(id) < impl_->tokens.size(), impl_->source, ": id ", id,
                " is not a token (vocab size ", impl_->tokens.size(), ")");
  return impl_->tokens[id];
}

bool BertTokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

int32_t BertTokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }
int32_t BertTokenizer::cls_id() const { return impl_->cls; }
int32_t BertTokenizer::sep_id() const { return impl_->sep; }
int32_t BertTokenizer::pad_id() const { return impl_->pad; }
int32_t BertTokenizer::unk_id() const { return impl_->unk; }
int32_t BertTokenizer::dec_id() const { return impl_->dec; }
int BertTokenizer::max_length() const { return impl_->max_length; }
const std::string& BertTokenizer::source() const { return impl_->source; }

}  // namespace bvllm
