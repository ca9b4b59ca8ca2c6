#include "data/qwen2_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <glog/logging.h>
#include <pcre2.h>     // defines: pcre2_compile, pcre2_jit_compile, pcre2_match, PCRE2_UTF, PCRE2_UCP
#include <utf8proc.h>  // defines: utf8proc_map, UTF8PROC_STABLE, UTF8PROC_COMPOSE

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include "data/utf8.h"
#include "runtime/error.h"

namespace bvllm {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// --- the GPT-2 byte-level alphabet (bytes_to_unicode in tokenization_qwen2.py) ------------------
// Printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ stand for themselves; the other 68 bytes map, in
// increasing order, to U+0100, U+0101, ... So space 0x20 is 'Ġ' (U+0120) and '\n' is 'Ċ' (U+010A).
struct ByteAlphabet {
  std::array<char32_t, 256> to_char{};
  std::unordered_map<char32_t, uint8_t> to_byte;

  ByteAlphabet() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet instance;
  return instance;
}

std::string byte_level_char(uint8_t b) {
  std::string s;
  utf8::append(s, alphabet().to_char[b]);
  return s;
}

// The bytes a vocab token stands for: each character mapped back through the alphabet. A token
// with a character outside the alphabet decodes to its own UTF-8 bytes, as tokenizers' ByteLevel
// decoder does. Returns {bytes, whether every character was in the alphabet}.
std::pair<std::string, bool> token_bytes(std::string_view token) {
  std::string bytes;
  size_t i = 0;
  while (i < token.size()) {
    const size_t n = utf8::sequence_length(token, i);
    if (n == 0) return {std::string(token), false};
    const auto it = alphabet().to_byte.find(utf8::code_point_at(token, i));
    if (it == alphabet().to_byte.end()) return {std::string(token), false};
    bytes += static_cast<char>(it->second);
    i += n;
  }
  return {bytes, true};
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// --- reading tokenizer.json with errors that name the file and the field -------------------------

constexpr int64_t kMaxId = int64_t{1} << 24;

class Reader {
 public:
  explicit Reader(const std::string& source) : source_(source) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(str_cat(source_, ": ", field, ": ", what));
  }

  // j[key] for an object j; `required` members must be present and not null.
  const json* member(const json& j, const std::string& field, const char* key, bool required) const {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) fail(join(field, key), "missing");
      return nullptr;
    }
    return &*it;
  }
  const json& object(const json& j, const std::string& field, const char* key) const {
    const json& v = *member(j, field, key, true);
    if (!v.is_object()) fail(join(field, key), str_cat("expected an object, got ", v.type_name()));
    return v;
  }
  const json& array(const json& j, const std::string& field, const char* key) const {
    const json& v = *member(j, field, key, true);
    if (!v.is_array()) fail(join(field, key), str_cat("expected an array, got ", v.type_name()));
    return v;
  }
  std::string string(const json& j, const std::string& field, const char* key) const {
    const json& v = *member(j, field, key, true);
    if (!v.is_string()) fail(join(field, key), str_cat("expected a string, got ", v.type_name()));
    return v.get<std::string>();
  }
  std::optional<std::string> optional_string(const json& j, const std::string& field, const char* key) const {
    const json* v = member(j, field, key, false);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) fail(join(field, key), str_cat("expected a string or null, got ", v->type_name()));
    return v->get<std::string>();
  }
  bool boolean(const json& j, const std::string& field, const char* key, bool fallback) const {
    const json* v = member(j, field, key, false);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail(join(field, key), str_cat("expected true or false, got ", v->dump()));
    return v->get<bool>();
  }
  int32_t id(const json& v, const std::string& field) const {
    // Ids index dense tables, so an absurd one is refused rather than allocated for.
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxId)
      fail(field, str_cat("expected a token id (an integer in [0, 2^24)), got ", v.dump()));
    return static_cast<int32_t>(v.get<int64_t>());
  }
  // The member's "type" string.
  std::string type(const json& j, const std::string& field) const {
    if (!j.is_object()) fail(field, str_cat("expected an object, got ", j.type_name()));
    return string(j, field, "type");
  }

  static std::string join(const std::string& field, const std::string& key) {
    return field.empty() ? key : field + "." + key;
  }
  static std::string index(const std::string& field, size_t i) { return str_cat(field, "[", i, "]"); }

 private:
  const std::string& source_;
};

// --- added tokens: leftmost-longest matching with a byte trie ----------------------------------

class AddedTokenMatcher {
 public:
  void add(std::string_view content, int32_t index) {
    int32_t node = 0;
    for (char c : content) {
      const auto b = static_cast<unsigned char>(c);
      int32_t child = -1;
      for (const auto& [byte, n] : nodes_[node].children)
        if (byte == b) child = n;
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[node].token = index;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // The longest token starting at text[i]: {token index, length}, or {-1, 0}.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t i) const {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) return {-1, 0};
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t node = 0;
    for (size_t j = i; j < text.size(); ++j) {
      const auto b = static_cast<unsigned char>(text[j]);
      int32_t child = -1;
      for (const auto& [byte, n] : nodes_[node].children)
        if (byte == b) child = n;
      if (child < 0) break;
      node = child;
      if (nodes_[node].token >= 0) best = {nodes_[node].token, j + 1 - i};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;
  };
  std::vector<Node> nodes_{Node{}};
  std::array<bool, 256> first_byte_{};
  bool empty_ = true;
};

// --- the split regex (PCRE2) ---------------------------------------------------------------------

struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

class SplitRegex {
 public:
  SplitRegex(const std::string& pattern, const Reader& reader, const std::string& field) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                          &offset, nullptr);
    if (code_ == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      reader.fail(field, str_cat("PCRE2 cannot compile the regex at offset ", offset, ": ",
                                 reinterpret_cast<const char*>(message.data())));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;
  ~SplitRegex() { pcre2_code_free(code_); }

  bool jit() const { return jit_; }

  // Split with behavior Isolated: every match is a piece and so is every gap between matches.
  // `text` must be valid UTF-8.
  template <typename F>
  void split(std::string_view text, F&& on_piece) const {
    // Only the whole match is needed, so one ovector pair serves any pattern.
    thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(pcre2_match_data_create(1, nullptr));
    CHECK(match != nullptr) << "pcre2_match_data_create failed";
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, last = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
      // The JIT's default 32 KiB stack can run out on pathological input; the interpreter keeps
      // its backtracking state on the heap.
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        std::array<PCRE2_UCHAR, 256> message{};
        pcre2_get_error_message(rc, message.data(), message.size());
        throw Error(
            str_cat("tokenizer split regex failed at byte ", pos, ": ", reinterpret_cast<const char*>(message.data())));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
      const size_t begin = ov[0], end = ov[1];
      if (end == begin) {  // an empty match yields no piece; step over one character
        pos = begin + std::max<size_t>(1, utf8::sequence_length(text, begin));
        continue;
      }
      if (begin > last) on_piece(text.substr(last, begin - last));
      on_piece(text.substr(begin, end - begin));
      last = pos = end;
    }
    if (last < text.size()) on_piece(text.substr(last));
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// --- the word cache --------------------------------------------------------------------------

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Ids of recently seen pieces. Lookups and inserts only try the lock, so threads never wait on
// each other (as tokenizers' BPE cache); when full it starts over.
class WordCache {
 public:
  static constexpr size_t kCapacity = 1 << 16;
  static constexpr size_t kMaxWordBytes = 256;

  bool lookup(std::string_view word, std::vector<int32_t>& out) const {
    std::shared_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    const auto it = map_.find(word);
    if (it == map_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void insert(std::string_view word, std::span<const int32_t> ids) const {
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return;
    if (map_.size() >= kCapacity) map_.clear();
    map_.emplace(std::string(word), std::vector<int32_t>(ids.begin(), ids.end()));
  }

 private:
  mutable std::shared_mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  BVLLM_REQUIRE(!in.bad(), path, ": read error");
  return buffer.str();
}

constexpr int32_t kUnk = -1;  // byte_symbols_ entry: the byte becomes model.unk_token

}  // namespace

// --- the tokenizer ---------------------------------------------------------------------------

struct Qwen2Tokenizer::Impl {
  std::string source;

  // Ids: tokens[id] is the string as the file writes it, bytes[id] what it decodes to, and
  // added_index[id] the entry in `added` (or -1).
  std::vector<std::string> tokens;
  std::vector<std::string> bytes;
  std::vector<int32_t> added_index;
  std::vector<bool> present;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;        // model.vocab
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> bytes_to_id;  // ignore_merges only

  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized false: matched on raw text
  AddedTokenMatcher normalized_matcher;  // normalized true: matched on NFC text

  bool nfc = false;
  std::unique_ptr<SplitRegex> regex;

  // BPE. byte_symbols[b]: the initial symbols for byte b (its byte-level token; or <0xXX> tokens
  // with byte_fallback; or kUnk). merges: (left id, right id) -> (rank, merged id).
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  std::array<std::vector<int32_t>, 256> byte_symbols;
  std::unordered_map<uint64_t, Merge> merges;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;

  WordCache cache;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void parse(const json& root);
  void parse_model(const Reader& r, const json& model);
  void parse_added_tokens(const Reader& r, const json& root);
  void parse_pipeline(const Reader& r, const json& root);
  void set_token(const Reader& r, const std::string& field, int32_t id, const std::string& token);

  std::string_view normalize(std::string_view text, std::string& buffer) const;
  void encode_normalized(std::string_view text, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;

  template <typename OnText, typename OnToken>
  void split_added(const AddedTokenMatcher& matcher, std::string_view text, OnText&& on_text, OnToken&& on_token) const;

  int32_t required_id(const char* token) const {
    const auto it = std::find_if(added.begin(), added.end(), [&](const AddedToken& t) { return t.content == token; });
    if (it != added.end()) return it->id;
    const auto v = vocab.find(std::string_view(token));
    BVLLM_REQUIRE(v != vocab.end(), source, ": the tokenizer has no token ", token);
    return v->second;
  }
};

void Qwen2Tokenizer::Impl::set_token(const Reader& r, const std::string& field, int32_t id, const std::string& token) {
  if (static_cast<size_t>(id) >= tokens.size()) {
    tokens.resize(id + 1);
    bytes.resize(id + 1);
    added_index.resize(id + 1, -1);
    present.resize(id + 1, false);
  }
  if (present[id] && tokens[id] != token)
    r.fail(field, str_cat("id ", id, " is given to both '", tokens[id], "' and '", token, "'"));
  present[id] = true;
  tokens[id] = token;
}

void Qwen2Tokenizer::Impl::parse(const json& root) {
  const Reader r(source);
  if (!root.is_object()) r.fail("(top level)", str_cat("expected a JSON object, got ", root.type_name()));
  parse_model(r, r.object(root, "", "model"));
  parse_added_tokens(r, root);
  parse_pipeline(r, root);
}

void Qwen2Tokenizer::Impl::parse_model(const Reader& r, const json& model) {
  if (const json* type = r.member(model, "model", "type", false); type != nullptr && *type != "BPE")
    r.fail("model.type", str_cat("expected \"BPE\", got ", type->dump()));
  if (const json* dropout = r.member(model, "model", "dropout", false);
      dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0))
    r.fail("model.dropout", str_cat("BPE dropout is not supported (expected null), got ", dropout->dump()));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::optional<std::string> affix = r.optional_string(model, "model", key);
    if (affix && !affix->empty())
      r.fail(Reader::join("model", key), str_cat("expected \"\" or null (byte-level BPE), got \"", *affix, "\""));
  }
  fuse_unk = r.boolean(model, "model", "fuse_unk", false);
  ignore_merges = r.boolean(model, "model", "ignore_merges", false);
  const bool byte_fallback = r.boolean(model, "model", "byte_fallback", false);

  // Vocab.
  const json& vocab_json = r.object(model, "model", "vocab");
  vocab.reserve(vocab_json.size());
  for (const auto& [token, id_json] : vocab_json.items()) {
    const std::string field = str_cat("model.vocab[\"", token, "\"]");
    const int32_t id = r.id(id_json, field);
    set_token(r, field, id, token);
    vocab.emplace(token, id);
  }
  for (const auto& [token, id] : vocab) {
    auto [decoded, byte_level] = token_bytes(token);
    bytes[id] = std::move(decoded);
    if (ignore_merges && byte_level) bytes_to_id.emplace(bytes[id], id);
  }
  if (const std::optional<std::string> unk = r.optional_string(model, "model", "unk_token")) {
    const auto it = vocab.find(*unk);
    if (it == vocab.end()) r.fail("model.unk_token", str_cat("'", *unk, "' is not in model.vocab"));
    unk_id = it->second;
  }

  // The initial symbol(s) of each byte, as tokenizers' BPE::merge_word picks them.
  for (int b = 0; b < 256; ++b) {
    const std::string ch = byte_level_char(static_cast<uint8_t>(b));
    if (const auto it = vocab.find(ch); it != vocab.end()) {
      byte_symbols[b] = {it->second};
      continue;
    }
    if (byte_fallback) {  // <0xXX> for each UTF-8 byte of the byte-level character
      std::vector<int32_t> ids;
      for (char c : ch) {
        std::array<char, 8> name{};
        std::snprintf(name.data(), name.size(), "<0x%02X>", static_cast<unsigned char>(c));
        const auto it = vocab.find(std::string_view(name.data()));
        if (it == vocab.end()) break;
        ids.push_back(it->second);
      }
      if (ids.size() == ch.size()) {
        byte_symbols[b] = std::move(ids);
        continue;
      }
    }
    if (unk_id) byte_symbols[b] = {kUnk};
  }

  // Merges: "a b" strings (tokenizers < 0.20, merges.txt) or ["a", "b"] pairs (tokenizers >= 0.20).
  const json& merges_json = r.array(model, "model", "merges");
  merges.reserve(merges_json.size());
  int32_t rank = 0;
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    const std::string field = Reader::index("model.merges", i);
    std::string a, b;
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      if (line.starts_with("#version")) continue;  // a merges.txt header, as tokenizers skips it
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        r.fail(field, str_cat("expected two tokens separated by one space, got \"", line, "\""));
      a = line.substr(0, space);
      b = line.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      r.fail(field, str_cat("expected a string \"a b\" or a pair [\"a\", \"b\"], got ", m.dump()));
    }
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    for (const auto& [it, token] : {std::pair{ia, &a}, std::pair{ib, &b}})
      if (it == vocab.end()) r.fail(field, str_cat("'", *token, "' is not in model.vocab"));
    if (iab == vocab.end()) r.fail(field, str_cat("the merged token '", a + b, "' is not in model.vocab"));
    // A repeated pair keeps its last rank, as tokenizers' map building does.
    merges.insert_or_assign(pair_key(ia->second, ib->second), Merge{rank++, iab->second});
  }
}

void Qwen2Tokenizer::Impl::parse_added_tokens(const Reader& r, const json& root) {
  const json* list = r.member(root, "", "added_tokens", false);
  if (list == nullptr) return;
  if (!list->is_array()) r.fail("added_tokens", str_cat("expected an array, got ", list->type_name()));
  for (size_t i = 0; i < list->size(); ++i) {
    const json& t = (*list)[i];
    const std::string field = Reader::index("added_tokens", i);
    if (!t.is_object()) r.fail(field, str_cat("expected an object, got ", t.type_name()));
    AddedToken token;
    token.id = r.id(*r.member(t, field, "id", true), Reader::join(field, "id"));
    token.content = r.string(t, field, "content");
    if (token.content.empty()) r.fail(Reader::join(field, "content"), "empty");
    if (const auto bad = utf8::find_invalid(token.content))
      r.fail(Reader::join(field, "content"), str_cat("not valid UTF-8 at byte ", *bad));
    token.special = r.boolean(t, field, "special", false);
    token.normalized = r.boolean(t, field, "normalized", !token.special);
    token.lstrip = r.boolean(t, field, "lstrip", false);
    token.rstrip = r.boolean(t, field, "rstrip", false);
    if (r.boolean(t, field, "single_word", false))
      r.fail(Reader::join(field, "single_word"), "single_word added tokens are not supported");
    // An added token may repeat a vocab entry (same id); it may not take another token's id.
    set_token(r, field, token.id, token.content);
    bytes[token.id] = token.content;
    added_index[token.id] = static_cast<int32_t>(added.size());
    (token.normalized ? normalized_matcher : raw_matcher).add(token.content, static_cast<int32_t>(added.size()));
    added.push_back(std::move(token));
  }
}

void Qwen2Tokenizer::Impl::parse_pipeline(const Reader& r, const json& root) {
  // normalizer: null or NFC.
  if (const json* n = r.member(root, "", "normalizer", false)) {
    const std::string type = r.type(*n, "normalizer");
    if (type != "NFC")
      r.fail("normalizer.type",
             str_cat("expected \"NFC\" or a null normalizer (the Qwen2 pipeline), got \"", type, "\""));
    nfc = true;
  }

  // pre_tokenizer: Sequence [Split(Regex, Isolated), ByteLevel(use_regex false, no prefix space)].
  const json& pre = *r.member(root, "", "pre_tokenizer", true);
  if (r.type(pre, "pre_tokenizer") != "Sequence")
    r.fail("pre_tokenizer.type", "expected \"Sequence\" of Split and ByteLevel (the Qwen2 pipeline)");
  const json& steps = r.array(pre, "pre_tokenizer", "pretokenizers");
  if (steps.size() != 2)
    r.fail("pre_tokenizer.pretokenizers", str_cat("expected [Split, ByteLevel], got ", steps.size(), " steps"));
  const std::string split_field = "pre_tokenizer.pretokenizers[0]";
  const json& split = steps[0];
  if (r.type(split, split_field) != "Split") r.fail(split_field + ".type", "expected \"Split\"");
  const std::string behavior = r.string(split, split_field, "behavior");
  if (behavior != "Isolated")
    r.fail(split_field + ".behavior", str_cat("expected \"Isolated\", got \"", behavior, "\""));
  if (r.boolean(split, split_field, "invert", false)) r.fail(split_field + ".invert", "expected false");
  const json& pattern = r.object(split, split_field, "pattern");
  regex = std::make_unique<SplitRegex>(r.string(pattern, split_field + ".pattern", "Regex"), r,
                                       split_field + ".pattern.Regex");

  const std::string byte_field = "pre_tokenizer.pretokenizers[1]";
  const json& byte_level = steps[1];
  if (r.type(byte_level, byte_field) != "ByteLevel") r.fail(byte_field + ".type", "expected \"ByteLevel\"");
  if (r.boolean(byte_level, byte_field, "add_prefix_space", false))
    r.fail(byte_field + ".add_prefix_space", "expected false");
  if (r.boolean(byte_level, byte_field, "use_regex", true))
    r.fail(byte_field + ".use_regex", "expected false (the Split step does the splitting)");

  // decoder: ByteLevel. post_processor: null or ByteLevel (adds nothing).
  if (const std::string type = r.type(*r.member(root, "", "decoder", true), "decoder"); type != "ByteLevel")
    r.fail("decoder.type", str_cat("expected \"ByteLevel\", got \"", type, "\""));
  if (const json* post = r.member(root, "", "post_processor", false)) {
    if (const std::string type = r.type(*post, "post_processor"); type != "ByteLevel")
      r.fail("post_processor.type", str_cat("expected \"ByteLevel\" or null (no BOS/EOS), got \"", type, "\""));
  }
}

template <typename OnText, typename OnToken>
void Qwen2Tokenizer::Impl::split_added(const AddedTokenMatcher& matcher, std::string_view text, OnText&& on_text,
                                       OnToken&& on_token) const {
  if (matcher.empty()) {
    if (!text.empty()) on_text(text);
    return;
  }
  size_t gap = 0;  // start of the text not yet handed out
  size_t i = 0;
  while (i < text.size()) {
    const auto [index, length] = matcher.longest_at(text, i);
    if (index < 0) {
      ++i;
      continue;
    }
    const AddedToken& token = added[index];
    size_t begin = i, end = i + length;
    if (token.lstrip) {  // absorb the whitespace before it (not past the previous token)
      while (begin > gap) {
        size_t start = begin - 1;
        while (start > gap && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        if (!utf8::is_white_space(utf8::code_point_at(text, start))) break;
        begin = start;
      }
    }
    if (token.rstrip) {
      while (end < text.size() && utf8::is_white_space(utf8::code_point_at(text, end)))
        end += utf8::sequence_length(text, end);
    }
    if (begin > gap) on_text(text.substr(gap, begin - gap));
    on_token(token.id);
    gap = i = end;
  }
  if (gap < text.size()) on_text(text.substr(gap));
}

std::string_view Qwen2Tokenizer::Impl::normalize(std::string_view text, std::string& buffer) const {
  if (!nfc || is_ascii(text)) return text;  // ASCII is already NFC
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                   &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw Error(str_cat("NFC normalization failed: ", utf8proc_errmsg(n)));
  buffer.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return buffer;
}

void Qwen2Tokenizer::Impl::encode_normalized(std::string_view text, std::vector<int32_t>& out) const {
  regex->split(text, [&](std::string_view piece) { encode_piece(piece, out); });
}

void Qwen2Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    if (const auto it = bytes_to_id.find(piece); it != bytes_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() == 1 && byte_symbols[static_cast<unsigned char>(piece[0])].size() == 1 &&
      byte_symbols[static_cast<unsigned char>(piece[0])][0] != kUnk) {
    out.push_back(byte_symbols[static_cast<unsigned char>(piece[0])][0]);
    return;
  }
  const bool cacheable = piece.size() <= WordCache::kMaxWordBytes;
  if (cacheable && cache.lookup(piece, out)) return;
  const size_t first = out.size();
  bpe(piece, out);
  if (cacheable) cache.insert(piece, std::span<const int32_t>(out).subspan(first));
}

// Byte-pair merging as tokenizers' Word::merge_all: a min-heap of candidate merges ordered by
// (rank, position); a popped candidate is applied when its left symbol is still alive and the
// pair still merges to the same id; the merged symbol then offers new candidates with its
// neighbours. O(n log n) in the piece length.
void Qwen2Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> candidates;
  symbols.clear();
  for (size_t i = 0; i < piece.size(); ++i) {
    const auto b = static_cast<unsigned char>(piece[i]);
    const std::vector<int32_t>& ids = byte_symbols[b];
    if (ids.empty())
      throw Error(str_cat(source, ": no token for byte 0x", "0123456789ABCDEF"[b >> 4], "0123456789ABCDEF"[b & 15],
                          ": model.vocab lacks '", byte_level_char(b),
                          "' and neither model.byte_fallback nor model.unk_token covers it"));
    for (int32_t id : ids) {
      if (id == kUnk) {
        if (fuse_unk && !symbols.empty() && symbols.back().id == *unk_id) continue;
        id = *unk_id;
      }
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    }
  }
  symbols.back().next = -1;

  auto merge_of = [&](int32_t a, int32_t b) -> const Merge* {
    const auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  // A min-heap in a reused vector: std::greater puts the smallest (rank, pos) on top.
  std::vector<Candidate>& heap = candidates;
  heap.clear();
  auto push = [&](const Merge* m, int32_t pos) {
    heap.push_back({m->rank, pos, m->id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const Merge* m = merge_of(symbols[i].id, symbols[i + 1].id)) push(m, static_cast<int32_t>(i));

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* m = merge_of(left.id, right.id);
    if (m == nullptr || m->id != top.id) continue;  // stale: a neighbour changed since the push
    left.id = top.id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0)
      if (const Merge* p = merge_of(symbols[left.prev].id, left.id)) push(p, left.prev);
    if (left.next >= 0)
      if (const Merge* n = merge_of(left.id, symbols[left.next].id)) push(n, top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

// --- public API --------------------------------------------------------------------------------

Qwen2Tokenizer::Qwen2Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Qwen2Tokenizer Qwen2Tokenizer::load(const std::string& path) {
  std::error_code ec;
  std::string file = path;
  if (fs::is_directory(path, ec)) {
    file = (fs::path(path) / "tokenizer.json").string();
    BVLLM_REQUIRE(fs::exists(file, ec), path, ": the directory has no tokenizer.json");
  } else {
    BVLLM_REQUIRE(fs::exists(path, ec), path, ": no such file (expected a tokenizer.json or a model directory)");
  }
  return from_json(read_file(file), file);
}

Qwen2Tokenizer Qwen2Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw Error(str_cat(source, ": not valid JSON: ", e.what()));
  }
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  impl->parse(root);
  return Qwen2Tokenizer(std::move(impl));
}

std::vector<int32_t> Qwen2Tokenizer::encode(std::string_view text) const {
  if (const auto bad = utf8::find_invalid(text))
    throw Error(str_cat("Qwen2Tokenizer::encode: the text is not valid UTF-8 at byte ", *bad));
  const Impl& impl = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  std::string buffer;
  auto push_id = [&](int32_t id) { out.push_back(id); };
  impl.split_added(
      impl.raw_matcher, text,
      [&](std::string_view piece) {
        const std::string_view normalized = impl.normalize(piece, buffer);
        impl.split_added(
            impl.normalized_matcher, normalized, [&](std::string_view part) { impl.encode_normalized(part, out); },
            push_id);
      },
      push_id);
  return out;
}

std::string Qwen2Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  // Vocab tokens' bytes are gathered and decoded together (a character may span tokens); added
  // tokens are written as their content between such runs.
  std::string out, run;
  for (const int32_t id : ids) {
    BVLLM_REQUIRE(id >= 0 && static_cast<size_t>(id) < impl.present.size() && impl.present[id], impl.source,
                  ": decode: id ", id, " is not a token (vocab size ", impl.present.size(), ")");
    const int32_t added = impl.added_index[id];
    if (added < 0) {
      run += impl.bytes[id];
      continue;
    }
    if (skip_special_tokens && impl.added[added].special) continue;
    out += utf8::decode_lossy(run);
    run.clear();
    out += impl.added[added].content;
  }
  out += utf8::decode_lossy(run);
  return out;
}

std::optional<int32_t> Qwen2Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& t : impl_->added)
    if (t.content == token) return t.id;
  const auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

const std::string& Qwen2Tokenizer::id_to_token(int32_t id) const {
  BVLLM_REQUIRE(id >= 0 && static_cast<size_t>(id) < impl_->present.size() && impl_->present[id], impl_->source,
                ": id ", id, " is not a token (vocab size ", impl_->present.size(), ")");
  return impl_->tokens[id];
}

int32_t Qwen2Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }
const std::vector<AddedToken>& Qwen2Tokenizer::added_tokens() const { return impl_->added; }
bool Qwen2Tokenizer::is_special(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->added_index.size() || impl_->added_index[id] < 0) return false;
  return impl_->added[impl_->added_index[id]].special;
}
int32_t Qwen2Tokenizer::endoftext_id() const { return impl_->required_id("<|endoftext|>"); }
int32_t Qwen2Tokenizer::im_start_id() const { return impl_->required_id("<|im_start|>"); }
int32_t Qwen2Tokenizer::im_end_id() const { return impl_->required_id("<|im_end|>"); }
const std::string& Qwen2Tokenizer::source() const { return impl_->source; }
bool Qwen2Tokenizer::regex_jit() const { return impl_->regex->jit(); }

}  // namespace bvllm
