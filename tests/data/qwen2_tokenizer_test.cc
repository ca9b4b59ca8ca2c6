// The Qwen2 tokenizer: exact BPE behaviour on tiny hand-written tokenizer.json files (merge order,
// both merges formats, added tokens, byte fallback and unk, decoding of cut characters, one test
// per malformed file), then the real Qwen vocabulary against the ids that Hugging Face
// tokenizers and transformers.js gave on a varied corpus (tests/reference/fixtures/
// tokenizer_qwen3.json), both merges formats on it, threads, and long inputs.
#include "data/qwen2_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <thread>

#include "data/utf8.h"
#include "runtime/error.h"
#include "tests/support/messages.h"
#include "tests/support/qwen_tokenizer.h"

namespace bvllm {
namespace {

using testing::error_of;

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// The Qwen2 split regex, as tokenizer.json writes it.
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The byte-level name of a byte: 'a' for 'a', "Ġ" for ' ', "Ċ" for '\n', "Ã" for 0xC3.
std::string byte_char(uint8_t b) {
  char32_t next = 0x100;
  for (int c = 0; c < 256; ++c) {
    const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    const char32_t ch = printable ? static_cast<char32_t>(c) : next++;
    if (c == b) {
      std::string s;
      utf8::append(s, ch);
      return s;
    }
  }
  return {};
}

// A tiny Qwen2-style tokenizer.json: ids 0..255 are the 256 byte tokens in byte order (minus
// `missing` bytes), then these merges, in rank order, each adding its merged token.
struct Tiny {
  std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"},    // 256 "ab"    rank 0
      {"ab", "c"},   // 257 "abc"   rank 1
      {"Ġ", "a"},    // 258 "Ġa"    rank 2
      {"b", "c"},    // 259 "bc"    rank 3
      {"a", "a"},    // 260 "aa"    rank 4
      {"Ġ", "Ġ"},    // 261 "ĠĠ"    rank 5
      {"ĠĠ", "ĠĠ"},  // 262 "ĠĠĠĠ"  rank 6
  };
  std::vector<uint8_t> missing;
  bool string_merges = false;
  json extra_vocab = json::object();
  json added = json::array({
      {{"id", 300}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}},
      {{"id", 301}, {"content", "<|im_start|>"}, {"special", true}, {"normalized", false}},
      {{"id", 302}, {"content", "<|im_end|>"}, {"special", true}, {"normalized", false}},
      {{"id", 303}, {"content", "<|im"}, {"special", false}, {"normalized", false}},
  });
  json model_extra = json::object();

  json build() const {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b)
      if (std::find(missing.begin(), missing.end(), b) == missing.end()) vocab[byte_char(b)] = b;
    json merge_list = json::array();
    int32_t id = 256;
    for (const auto& [a, b] : merges) {
      vocab[a + b] = id++;
      merge_list.push_back(string_merges ? json(a + " " + b) : json::array({a, b}));
    }
    for (const auto& [token, tid] : extra_vocab.items()) vocab[token] = tid;
    json model = {{"type", "BPE"},           {"dropout", nullptr},     {"unk_token", nullptr},
                  {"fuse_unk", false},       {"byte_fallback", false}, {"ignore_merges", false},
                  {"vocab", vocab},          {"merges", merge_list},   {"continuing_subword_prefix", ""},
                  {"end_of_word_suffix", ""}};
    for (const auto& [key, value] : model_extra.items()) model[key] = value;
    const json byte_level = {
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
    return {
        {"version", "1.0"},
        {"added_tokens", added},
        {"normalizer", {{"type", "NFC"}}},
        {"pre_tokenizer",
         {{"type", "Sequence"},
          {"pretokenizers",
           json::array(
               {{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                byte_level})}}},
        {"post_processor", byte_level},
        {"decoder", byte_level},
        {"model", model}};
  }
  Qwen2Tokenizer load() const { return Qwen2Tokenizer::from_json(build().dump(), "tiny/tokenizer.json"); }
};

// --- exact BPE on the tiny vocab -------------------------------------------------------------

TEST(Qwen2TokenizerTiny, MergesLowestRankFirst) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  EXPECT_EQ(tok.encode("abc"), (Ids{257}));        // a b c -> ab c (rank 0) -> abc (rank 1)
  EXPECT_EQ(tok.encode("bca"), (Ids{259, 'a'}));   // b c -> bc (rank 3); "ca" never merges
  EXPECT_EQ(tok.encode("abcd"), (Ids{257, 'd'}));  // the pair (abc, d) has no merge
  EXPECT_EQ(tok.encode(" ab"), (Ids{' ', 256}));   // (a,b) rank 0 beats (Ġ,a) rank 2, then (Ġ,ab) has none
  EXPECT_EQ(tok.encode(" ac"), (Ids{258, 'c'}));   // Ġa
  EXPECT_EQ(tok.encode("aaaa"), (Ids{260, 260}));  // equal ranks merge leftmost first: aa aa
  EXPECT_EQ(tok.encode("aaa"), (Ids{260, 'a'}));   // aa a, not a aa
  EXPECT_EQ(tok.encode("abab"), (Ids{256, 256}));  // both occurrences of the pair
  EXPECT_EQ(tok.encode(""), (Ids{}));
  EXPECT_EQ(tok.vocab_size(), 304);
}

TEST(Qwen2TokenizerTiny, PreTokenizerSplitsBeforeMerging) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  // "ab ab": pieces "ab" and " ab"; merges never cross a piece boundary.
  EXPECT_EQ(tok.encode("ab ab"), (Ids{256, ' ', 256}));
  // Digits are one piece each; "b1c" is three pieces, so no "bc".
  EXPECT_EQ(tok.encode("b1c"), (Ids{'b', '1', 'c'}));
  // Four spaces before a letter: "\s+(?!\S)" takes three, the fourth joins the letter.
  EXPECT_EQ(tok.encode("    a"), (Ids{261, ' ', 258}));
  // Five trailing spaces are one piece: ĠĠĠĠ Ġ.
  EXPECT_EQ(tok.encode("b     "), (Ids{'b', 262, ' '}));
  // Contractions are their own pieces, case-insensitively.
  EXPECT_EQ(tok.encode("a'S"), (Ids{'a', '\'', 'S'}));  // "'S" is a piece; no merges for it
}

TEST(Qwen2TokenizerTiny, BothMergesFormatsGiveTheSameIds) {
  Tiny pairs, strings;
  strings.string_merges = true;
  const Qwen2Tokenizer a = pairs.load(), b = strings.load();
  for (const char* text : {"abc", " ab", "aaaa abcab bca", "  a\n\nab  "}) EXPECT_EQ(a.encode(text), b.encode(text));
  // A merges.txt header line in the string form is skipped and takes no rank.
  json j = strings.build();
  j["model"]["merges"].insert(j["model"]["merges"].begin(), "#version: 0.2");
  EXPECT_EQ(Qwen2Tokenizer::from_json(j.dump(), "t").encode("abc"), (Ids{257}));
}

TEST(Qwen2TokenizerTiny, AddedTokensAreMatchedBeforeSplittingLongestFirst) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  EXPECT_EQ(tok.encode("ab<|im_start|>ab"), (Ids{256, 301, 256}));
  EXPECT_EQ(tok.encode("<|im_end|><|endoftext|>"), (Ids{302, 300}));
  // "<|im" is a token too: the longest match wins where both start, the short one elsewhere.
  EXPECT_EQ(tok.encode("<|im_start|"), (Ids{303, '_', 's', 't', 'a', 'r', 't', '|'}));
  // A special token inside a word is still cut out; the text around it is split on its own.
  EXPECT_EQ(tok.encode(" a<|endoftext|>c"), (Ids{258, 300, 'c'}));
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 302);
  EXPECT_EQ(tok.id_to_token(301), "<|im_start|>");
  EXPECT_EQ(tok.im_start_id(), 301);
  EXPECT_EQ(tok.im_end_id(), 302);
  EXPECT_EQ(tok.endoftext_id(), 300);
  EXPECT_TRUE(tok.is_special(300));
  EXPECT_FALSE(tok.is_special(303));
  EXPECT_FALSE(tok.is_special('a'));
}

TEST(Qwen2TokenizerTiny, AddedTokenStripAndNormalizedFlags) {
  Tiny t;
  t.added.push_back({{"id", 310}, {"content", "<m>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}});
  t.added.push_back({{"id", 311}, {"content", "\u00e9"}, {"special", false}, {"normalized", true}});
  t.added.push_back({{"id", 312}, {"content", "o\u0308"}, {"special", false}, {"normalized", false}});
  const Qwen2Tokenizer tok = t.load();
  // lstrip/rstrip absorb the whitespace on both sides (Unicode White_Space, U+3000 included).
  EXPECT_EQ(tok.encode("b  <m> \n\u3000c"), (Ids{'b', 310, 'c'}));
  // "normalized": true matches after NFC: "e" + U+0301 composes to U+00E9.
  EXPECT_EQ(tok.encode("e\u0301"), (Ids{311}));
  EXPECT_EQ(tok.encode("\u00e9"), (Ids{311}));
  // "normalized": false matches the raw text only: NFC turns "o" + U+0308 into U+00F6 otherwise.
  EXPECT_EQ(tok.encode("o\u0308"), (Ids{312}));
  EXPECT_EQ(tok.encode("\u00f6"), (Ids{0xC3, 0xB6}));
}

TEST(Qwen2TokenizerTiny, NfcComposesBeforeSplitting) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  // "e" + U+0301 -> U+00E9 = C3 A9: two byte tokens, not three.
  EXPECT_EQ(tok.encode("e\u0301"), (Ids{0xC3, 0xA9}));
  // Hangul jamo compose to one syllable (U+AC00 = EA B0 80).
  EXPECT_EQ(tok.encode("\u1100\u1161"), (Ids{0xEA, 0xB0, 0x80}));
}

TEST(Qwen2TokenizerTiny, UnknownBytesUseByteFallbackThenUnk) {
  // 'e' (0x65) and 0xC3 have no byte token.
  Tiny t;
  t.missing = {'e', 0xC3};
  // Without byte_fallback or unk_token, such a byte is an error naming it (tokenizers would drop
  // it silently).
  const std::string err = error_of([&] { t.load().encode("bed"); });
  EXPECT_CONTAINS(err, "tiny/tokenizer.json");
  EXPECT_CONTAINS(err, "0x65");
  EXPECT_CONTAINS(err, "unk_token");

  // byte_fallback: <0xXX> tokens for the UTF-8 bytes of the byte-level character, as tokenizers'
  // BPE::merge_word does: 'e' -> <0x65>; byte 0xC3 is 'Ã' = C3 83 -> <0xC3><0x83>.
  Tiny fallback = t;
  fallback.model_extra = {{"byte_fallback", true}};
  fallback.extra_vocab = {{"<0x65>", 400}, {"<0xC3>", 401}, {"<0x83>", 402}};
  const Qwen2Tokenizer fb = fallback.load();
  EXPECT_EQ(fb.encode("bed"), (Ids{'b', 400, 'd'}));
  EXPECT_EQ(fb.encode("\u00e9"), (Ids{401, 402, 0xA9}));  // é = C3 A9
  EXPECT_EQ(fb.decode(Ids{'b', 400, 'd'}), "b<0x65>d");   // the byte-level decoder keeps <0x65>

  // unk_token, with and without fuse_unk.
  Tiny unk = t;
  unk.extra_vocab = {{"<unk>", 400}};
  unk.model_extra = {{"unk_token", "<unk>"}};
  EXPECT_EQ(unk.load().encode("beed"), (Ids{'b', 400, 400, 'd'}));
  unk.model_extra["fuse_unk"] = true;
  EXPECT_EQ(unk.load().encode("beed"), (Ids{'b', 400, 'd'}));
}

TEST(Qwen2TokenizerTiny, IgnoreMergesTakesWholeVocabWords) {
  Tiny t;
  t.extra_vocab = {{"ca", 400}};  // reachable only as a whole word: no merge makes it
  EXPECT_EQ(t.load().encode("ca"), (Ids{'c', 'a'}));
  t.model_extra = {{"ignore_merges", true}};
  EXPECT_EQ(t.load().encode("ca"), (Ids{400}));
  EXPECT_EQ(t.load().encode("abc"), (Ids{257}));
}

TEST(Qwen2TokenizerTiny, DecodeRoundTripsAndReplacesCutCharacters) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  for (const char* text : {"abc aaa", "  two\n\nlines  ", "中文 emoji 😀 <|im_start|>x<|im_end|>", "\t\r\n"})
    EXPECT_EQ(tok.decode(tok.encode(text)), text) << text;
  // "€" = E2 82 AC: every cut gives one U+FFFD for the maximal subpart.
  EXPECT_EQ(tok.decode(Ids{0xE2, 0x82, 0xAC}), "\u20ac");
  EXPECT_EQ(tok.decode(Ids{0xE2, 0x82}), "\ufffd");
  EXPECT_EQ(tok.decode(Ids{'a', 0xE2, 0x82, 'b'}), "a\ufffdb");
  EXPECT_EQ(tok.decode(Ids{0xE2, 0x82, 302}), "\ufffd<|im_end|>");
  EXPECT_EQ(tok.decode(Ids{0xC0, 0xAF}), "\ufffd\ufffd");              // overlong
  EXPECT_EQ(tok.decode(Ids{0xED, 0xA0, 0x80}), "\ufffd\ufffd\ufffd");  // surrogate
  // A character split across tokens decodes whole.
  EXPECT_EQ(tok.decode(Ids{0xF0, 0x9F, 0x98, 0x80}), "😀");
  // Special tokens: kept or skipped; non-special added tokens are always kept.
  EXPECT_EQ(tok.decode(Ids{301, 'a', 302, 303}, true), "a<|im");
  EXPECT_EQ(tok.decode(Ids{301, 'a', 302, 303}, false), "<|im_start|>a<|im_end|><|im");
  EXPECT_CONTAINS(error_of([&] { tok.decode(Ids{304}); }), "id 304 is not a token");
  EXPECT_CONTAINS(error_of([&] { tok.decode(Ids{-1}); }), "id -1 is not a token");
  EXPECT_CONTAINS(error_of([&] { tok.id_to_token(999); }), "id 999 is not a token");
}

TEST(Qwen2TokenizerTiny, InvalidUtf8InputIsAnError) {
  const Qwen2Tokenizer tok = Tiny{}.load();
  EXPECT_CONTAINS(error_of([&] { tok.encode("ab\xE2\x82"); }), "not valid UTF-8 at byte 2");
  EXPECT_CONTAINS(error_of([&] { tok.encode("\xED\xA0\x80"); }), "not valid UTF-8 at byte 0");
}

// --- malformed files: each error names the file and the field ----------------------------------

std::string load_error(const json& j) {
  return error_of([&] { Qwen2Tokenizer::from_json(j.dump(), "bad/tokenizer.json"); });
}

TEST(Qwen2TokenizerErrors, NameTheFileAndTheField) {
  const json good = Tiny{}.build();
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"no model", [](json& j) { j.erase("model"); }, {"model: missing"}},
      {"vocab not an object", [](json& j) { j["model"]["vocab"] = json::array(); }, {"model.vocab", "an object"}},
      {"no merges", [](json& j) { j["model"].erase("merges"); }, {"model.merges: missing"}},
      {"model type", [](json& j) { j["model"]["type"] = "WordPiece"; }, {"model.type", "BPE"}},
      {"negative id", [](json& j) { j["model"]["vocab"]["a"] = -3; }, {"model.vocab[\"a\"]", "token id"}},
      {"id as string", [](json& j) { j["model"]["vocab"]["a"] = "97"; }, {"model.vocab[\"a\"]", "token id"}},
      {"huge id", [](json& j) { j["model"]["vocab"]["a"] = 1 << 30; }, {"model.vocab[\"a\"]", "2^24"}},
      {"shared id", [](json& j) { j["model"]["vocab"]["zz"] = 5; }, {"id 5 is given to both"}},
      {"merge not a string or pair", [](json& j) { j["model"]["merges"][2] = 7; }, {"model.merges[2]", "pair"}},
      {"merge pair of three",
       [](json& j) {
         j["model"]["merges"][0] = {"a", "b", "c"};
       },
       {"model.merges[0]"}},
      {"merge string with two spaces",
       [](json& j) { j["model"]["merges"][1] = "ab  c"; },
       {"model.merges[1]", "one space"}},
      {"merge of an unknown token",
       [](json& j) {
         j["model"]["merges"][3] = {"b", "zz"};
       },
       {"model.merges[3]", "'zz' is not in model.vocab"}},
      {"merged token missing",
       [](json& j) {
         j["model"]["merges"].push_back({"c", "d"});
       },
       {"model.merges[7]", "merged token 'cd'"}},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"}},
      {"suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }, {"model.end_of_word_suffix"}},
      {"unk not in vocab", [](json& j) { j["model"]["unk_token"] = "<unk>"; }, {"model.unk_token", "<unk>"}},
      {"added token without id", [](json& j) { j["added_tokens"][1].erase("id"); }, {"added_tokens[1].id: missing"}},
      {"added token empty", [](json& j) { j["added_tokens"][0]["content"] = ""; }, {"added_tokens[0].content"}},
      {"added token on a vocab id",
       [](json& j) { j["added_tokens"][0]["id"] = 97; },
       {"added_tokens[0]", "id 97 is given to both"}},
      {"single_word", [](json& j) { j["added_tokens"][0]["single_word"] = true; }, {"added_tokens[0].single_word"}},
      {"normalizer",
       [](json& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       {"normalizer.type", "NFKC"}},
      {"no pre_tokenizer", [](json& j) { j.erase("pre_tokenizer"); }, {"pre_tokenizer: missing"}},
      {"pre_tokenizer steps",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"].erase(1); },
       {"pre_tokenizer.pretokenizers", "[Split, ByteLevel]"}},
      {"bad regex",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}+"; },
       {"pre_tokenizer.pretokenizers[0].pattern.Regex", "PCRE2"}},
      {"split behavior",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       {"pre_tokenizer.pretokenizers[0].behavior"}},
      {"byte level regex",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true; },
       {"pre_tokenizer.pretokenizers[1].use_regex"}},
      {"decoder",
       [](json& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       {"decoder.type", "ByteLevel"}},
      {"post_processor",
       [](json& j) {
         j["post_processor"] = {{"type", "TemplateProcessing"}};
       },
       {"post_processor.type"}},
  };
  for (const Case& c : cases) {
    json j = good;
    c.edit(j);
    const std::string err = load_error(j);
    EXPECT_CONTAINS(err, "bad/tokenizer.json: ") << c.what;
    for (const std::string& part : c.expect) EXPECT_CONTAINS(err, part) << c.what;
  }
  EXPECT_CONTAINS(error_of([] { Qwen2Tokenizer::from_json("{\"model\": ", "bad/tokenizer.json"); }),
                  "bad/tokenizer.json: not valid JSON");
  EXPECT_CONTAINS(error_of([] { Qwen2Tokenizer::from_json("[1]", "bad/tokenizer.json"); }), "a JSON object");
}

TEST(Qwen2TokenizerErrors, MissingSpecialTokenAndFiles) {
  Tiny t;
  t.added = json::array();
  EXPECT_CONTAINS(error_of([&] { t.load().im_end_id(); }),
                  "tiny/tokenizer.json: the tokenizer has no token <|im_end|>");
  const fs::path dir = fs::temp_directory_path() / ("bvllm_tok_" + std::to_string(getpid()));
  fs::create_directories(dir);
  EXPECT_CONTAINS(error_of([&] { Qwen2Tokenizer::load(dir.string()); }), "the directory has no tokenizer.json");
  EXPECT_CONTAINS(error_of([&] { Qwen2Tokenizer::load((dir / "nope.json").string()); }), "no such file");
  std::ofstream(dir / "tokenizer.json") << Tiny{}.build().dump();
  EXPECT_EQ(Qwen2Tokenizer::load(dir.string()).encode("abc"), (Ids{257}));  // a model directory
  EXPECT_EQ(Qwen2Tokenizer::load((dir / "tokenizer.json").string()).source(), (dir / "tokenizer.json").string());
  fs::remove_all(dir);
}

// --- the real Qwen vocabulary against the reference ids ------------------------------------------

Ids ids_of(const json& j) { return j.get<Ids>(); }

TEST(Qwen2TokenizerReal, VocabularyAndSpecialIds) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  EXPECT_EQ(tok.endoftext_id(), 151643);
  EXPECT_EQ(tok.im_start_id(), 151644);
  EXPECT_EQ(tok.im_end_id(), 151645);
  EXPECT_GE(tok.vocab_size(), 151646);  // 151646 for Qwen2-Instruct, 151669 for the Qwen3 file
  EXPECT_EQ(tok.id_to_token(0), "!");
  EXPECT_EQ(tok.id_to_token(198), "\u010a");  // "Ċ" = '\n'
  EXPECT_EQ(tok.id_to_token(256), "\u0120\u0120");
  EXPECT_EQ(tok.token_to_id("\u0120\u0120"), 256);
  EXPECT_EQ(tok.token_to_id("no such token"), std::nullopt);
  EXPECT_TRUE(tok.is_special(151645));
  std::cout << "split regex JIT: " << (tok.regex_jit() ? "yes" : "no (interpreter)") << "\n";
}

TEST(Qwen2TokenizerReal, EncodeMatchesTheReference) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const json& fixture = testing::tokenizer_fixture();
  ASSERT_GE(fixture["encode"].size(), 30u);
  for (const json& c : fixture["encode"]) {
    EXPECT_EQ(tok.encode(c["text"].get<std::string>()), ids_of(c["ids"])) << c["name"];
  }
  for (const json& c : fixture["chat"])
    EXPECT_EQ(tok.encode(c["text"].get<std::string>()), ids_of(c["ids"])) << c["name"];
}

TEST(Qwen2TokenizerReal, DecodeMatchesTheReference) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  for (const json& c : testing::tokenizer_fixture()["decode"]) {
    EXPECT_EQ(tok.decode(ids_of(c["ids"]), c["skip_special_tokens"].get<bool>()), c["text"].get<std::string>())
        << c["name"];
  }
  // Texts that NFC leaves alone come back unchanged.
  for (const json& c : testing::tokenizer_fixture()["encode"]) {
    const std::string name = c["name"];
    if (name.starts_with("nfc_") || name == "case_folding") continue;
    EXPECT_EQ(tok.decode(ids_of(c["ids"])), c["text"].get<std::string>()) << name;
  }
}

TEST(Qwen2TokenizerReal, RandomStringsMatchTheReference) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const json& cases = testing::tokenizer_fixture()["random"];
  ASSERT_GE(cases.size(), 100u);
  int failures = 0;
  for (const json& c : cases) {
    const Ids ids = tok.encode(c["text"].get<std::string>());
    failures += ids != ids_of(c["ids"]);
    EXPECT_EQ(ids, ids_of(c["ids"])) << c["name"] << ": " << c["text"].dump();
    EXPECT_EQ(tok.decode(ids_of(c["ids"])), c["decoded"].get<std::string>()) << c["name"];
    if (failures > 5) break;
  }
}

TEST(Qwen2TokenizerReal, StringMergesGiveTheSameIds) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  // Rewrite the file's merges in the other format ("a b" strings <-> ["a", "b"] pairs) and load.
  std::ifstream in(testing::qwen_tokenizer()->source());
  json j = json::parse(in);
  json& merges = j["model"]["merges"];
  ASSERT_GT(merges.size(), 150000u);
  const bool pairs = merges[0].is_array();
  for (json& m : merges) {
    if (pairs) {
      m = m[0].get<std::string>() + " " + m[1].get<std::string>();
    } else {
      const std::string s = m.get<std::string>();
      m = json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
    }
  }
  const Qwen2Tokenizer other = Qwen2Tokenizer::from_json(j.dump(), "rewritten tokenizer.json");
  for (const json& c : testing::tokenizer_fixture()["encode"])
    EXPECT_EQ(other.encode(c["text"].get<std::string>()), ids_of(c["ids"])) << c["name"];
}

TEST(Qwen2TokenizerReal, ThreadsShareOneTokenizer) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const json& cases = testing::tokenizer_fixture()["encode"];
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (size_t i = (t + round) % cases.size(), n = 0; n < cases.size(); ++n, i = (i + 1) % cases.size())
          failures[t] += tok.encode(cases[i]["text"].get<std::string>()) != ids_of(cases[i]["ids"]);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, (std::vector<int>(4, 0)));
}

// Long runs must stay linear: 1 MiB of one kind of character in one piece.
TEST(Qwen2TokenizerReal, LongRunsAreLinear) {
  BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER();
  const Qwen2Tokenizer& tok = *testing::qwen_tokenizer();
  const size_t n = size_t{1} << 20;
  for (const std::string& text : {std::string(n, ' ') + "x", std::string(n, '\n'), "a" + std::string(n, '\t') + "b",
                                  std::string(n, 'a'), std::string(n, '!'), std::string(n, '7')}) {
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = tok.encode(text);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_LT(seconds, 20.0) << "encoding 1 MiB of '" << text[1] << "' took " << seconds << " s";
  }
}

}  // namespace
}  // namespace bvllm
