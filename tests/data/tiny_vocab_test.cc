// data/tiny_vocab.h through the real readers: the tokenizer.json is loaded by Qwen2Tokenizer and
// the vocab.txt by BertTokenizer. Every word of the given texts is one token (the expected tokens
// are written out here), the special tokens follow the vocabulary, anything else still encodes and
// decodes back to itself, and the BERT vocab covers the texts' words without [UNK].
#include "data/tiny_vocab.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "data/bert_tokenizer.h"
#include "data/qwen2_tokenizer.h"
#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

const std::vector<std::string> kTexts = {
    "\nDescribe the video. a red circle moves left.",
    "system\nYou are a helpful assistant.",
    "user\n",
    "\nWhat colour is the object?",
    "\nassistant\nred",
    "\nHow many objects are there?",
    "\nassistant\nthree",
};

Qwen2Tokenizer tokenizer_of(const std::vector<std::string>& texts) {
  return Qwen2Tokenizer::from_json(tiny_tokenizer_json(build_tiny_vocab(texts)), "tiny tokenizer");
}

std::vector<std::string> token_strings(const Qwen2Tokenizer& tokenizer, std::string_view text) {
  std::vector<std::string> tokens;
  for (int32_t id : tokenizer.encode(text)) tokens.push_back(tokenizer.id_to_token(id));
  return tokens;
}

using Tokens = std::vector<std::string>;

TEST(TinyVocab, ByteAlphabetIsGpt2s) {
  EXPECT_EQ(byte_level_token(' '), "Ġ");
  EXPECT_EQ(byte_level_token('\n'), "Ċ");
  EXPECT_EQ(byte_level_token('a'), "a");
  EXPECT_EQ(byte_level_token(0), "Ā");
  EXPECT_EQ(byte_level_token(0xAD), "Ń");  // the soft hyphen is not printable: 256 + 66
  EXPECT_EQ(byte_level_token(0xFF), "ÿ");
}

TEST(TinyVocab, PretokenizeSplitsAsQwen2) {
  EXPECT_EQ(qwen2_pretokenize("Hello world's 123\n\nok?! x"),
            (Tokens{"Hello", " world", "'s", " ", "1", "2", "3", "\n\n", "ok", "?!", " x"}));
  EXPECT_EQ(qwen2_pretokenize("\nWhat colour is the object?"),
            (Tokens{"\n", "What", " colour", " is", " the", " object", "?"}));
  EXPECT_CONTAINS(error_of([] { qwen2_pretokenize("bad \xFF byte"); }), "invalid UTF-8 at byte 4");
}

TEST(TinyVocab, EveryWordOfTheTextsIsOneToken) {
  const Qwen2Tokenizer tokenizer = tokenizer_of(kTexts);
  EXPECT_EQ(token_strings(tokenizer, "\nDescribe the video. a red circle moves left."),
            (Tokens{"Ċ", "Describe", "Ġthe", "Ġvideo", ".", "Ġa", "Ġred", "Ġcircle", "Ġmoves", "Ġleft", "."}));
  EXPECT_EQ(token_strings(tokenizer, "system\nYou are a helpful assistant."),
            (Tokens{"system", "Ċ", "You", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", "."}));
  EXPECT_EQ(token_strings(tokenizer, "\nHow many objects are there?"),
            (Tokens{"Ċ", "How", "Ġmany", "Ġobjects", "Ġare", "Ġthere", "?"}));
  // Words at the start of a line are one token too: the answers, "user", "assistant".
  for (const char* word : {"red", "three", "user", "assistant", "What", "How", "You", "system"})
    EXPECT_EQ(token_strings(tokenizer, word), Tokens{word}) << word;
  // Only the forms that occur: " three" never follows a space in these texts.
  EXPECT_GT(tokenizer.encode(" three").size(), 1u);
}

TEST(TinyVocab, SpecialTokensFollowTheVocabulary) {
  const TinyVocab vocab = build_tiny_vocab(kTexts);
  const Qwen2Tokenizer tokenizer = tokenizer_of(kTexts);
  const auto n = static_cast<int32_t>(vocab.tokens.size());
  EXPECT_EQ(tokenizer.endoftext_id(), n);
  EXPECT_EQ(tokenizer.im_start_id(), n + 1);
  EXPECT_EQ(tokenizer.im_end_id(), n + 2);
  EXPECT_EQ(tokenizer.vocab_size(), n + 3);
  EXPECT_TRUE(tokenizer.is_special(n + 2));
  const std::vector<int32_t> ids = tokenizer.encode("<|im_start|>user\nred<|im_end|>\n<|endoftext|>");
  EXPECT_EQ(ids, (std::vector<int32_t>{n + 1, *tokenizer.token_to_id("user"), *tokenizer.token_to_id("Ċ"),
                                       *tokenizer.token_to_id("red"), n + 2, *tokenizer.token_to_id("Ċ"), n}));
  // The vocabulary is small: bytes, the words and their prefixes.
  EXPECT_LT(vocab.tokens.size(), 256u + 150u);
  for (int b = 0; b < 256; ++b)
    EXPECT_EQ(vocab.tokens[static_cast<size_t>(b)], byte_level_token(static_cast<uint8_t>(b)));
}

TEST(TinyVocab, AnyTextEncodesAndDecodesBack) {
  const Qwen2Tokenizer tokenizer = tokenizer_of(kTexts);
  // Unknown words fall back to bytes (and the merges they happen to contain).
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("zebra")), "zebra");
  EXPECT_GT(tokenizer.encode("zebra").size(), 1u);
  // Random text from a pool of ASCII, whitespace runs, dataset words and multi-byte characters
  // (all NFC, which the tokenizer's normalizer keeps as they are).
  const std::vector<std::string> pool = {"a",   "Z",    " ",   "  ", "\n", "\t",   "?", ".",    "'s", "0",  "9",
                                         "red", " red", "the", "é",  "ß",  "日本", "😀", "\r\n", "<|", "|>", "{}"};
  std::mt19937 rng(7);
  for (int i = 0; i < 500; ++i) {
    std::string text;
    const int parts = static_cast<int>(rng() % 20);
    for (int p = 0; p < parts; ++p) text += pool[rng() % pool.size()];
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

TEST(TinyVocab, SameWordsGiveTheSameFile) {
  std::vector<std::string> shuffled = kTexts;
  std::reverse(shuffled.begin(), shuffled.end());
  shuffled.push_back(kTexts[0]);  // duplicates change nothing
  EXPECT_EQ(tiny_tokenizer_json(build_tiny_vocab(kTexts)), tiny_tokenizer_json(build_tiny_vocab(shuffled)));
}

TEST(TinyVocab, WriteTokenizerFileLoads) {
  const fs::path dir = fs::temp_directory_path() / ("bvllm_tiny_vocab_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "tokenizer.json").string();
  const int32_t ids = write_tiny_tokenizer(path, kTexts);
  const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::load(path);
  EXPECT_EQ(tokenizer.vocab_size(), ids);
  EXPECT_EQ(token_strings(tokenizer, "\nWhat colour is the object?"),
            (Tokens{"Ċ", "What", "Ġcolour", "Ġis", "Ġthe", "Ġobject", "?"}));
  EXPECT_CONTAINS(error_of([&] { write_tiny_tokenizer((dir / "missing" / "t.json").string(), kTexts); }),
                  "cannot open for writing");

  const std::string vocab_path = (dir / "vocab.txt").string();
  const int32_t lines = write_tiny_bert_vocab(vocab_path, kTexts);
  const BertTokenizer bert = BertTokenizer::from_vocab_file(vocab_path);
  EXPECT_EQ(bert.vocab_size(), lines + 1);  // + [DEC]
  EXPECT_EQ(bert.dec_id(), lines);
  fs::remove_all(dir);
}

TEST(TinyBertVocab, CoversTheWordsLowerCased) {
  const std::vector<std::string> vocab = tiny_bert_vocab(kTexts);
  ASSERT_GE(vocab.size(), 5u);
  EXPECT_EQ((Tokens(vocab.begin(), vocab.begin() + 5)), (Tokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}));
  const BertTokenizer bert = BertTokenizer::from_tokens(vocab, "tiny bert vocab");
  EXPECT_EQ(bert.pad_id(), 0);
  const std::vector<int32_t> ids = bert.tokenize("What colour is the object?");
  ASSERT_EQ(ids.size(), 6u);
  for (int32_t id : ids) EXPECT_NE(id, bert.unk_id());
  EXPECT_EQ(bert.decode(ids), "what colour is the object?");
  EXPECT_EQ(bert.tokenize("Describe the video.").size(), 4u);
  EXPECT_EQ(bert.tokenize("zebra"), std::vector<int32_t>{bert.unk_id()});
  // Sorted and unique after the special tokens.
  EXPECT_TRUE(std::is_sorted(vocab.begin() + 5, vocab.end()));
  EXPECT_EQ(std::adjacent_find(vocab.begin(), vocab.end()), vocab.end());
  EXPECT_CONTAINS(error_of([] { tiny_bert_vocab(std::vector<std::string>{"café"}); }), "is not ASCII");
}

}  // namespace
}  // namespace bvllm::data
