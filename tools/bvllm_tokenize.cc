// bvllm_tokenize: the Qwen2 tokenizer on the command line.
//
//   echo "Hello, world!" | build/bin/bvllm_tokenize --tokenizer=DIR_OR_TOKENIZER_JSON
//   9707 11 1879 0 198
//   echo "9707 11 1879 0" | build/bin/bvllm_tokenize --tokenizer=... --decode
//   Hello, world!
//
// Encoding reads all of stdin as one UTF-8 text (newlines included) and prints the ids on one
// line. Decoding reads whitespace-separated ids and prints the text with no newline added.
// --stats reports on stderr how long loading and the (single-threaded) encode or decode took.
#include <gflags/gflags.h>

#include <charconv>
#include <chrono>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "data/qwen2_tokenizer.h"
#include "runtime/error.h"

DEFINE_string(tokenizer, "", "a tokenizer.json, or a model directory that holds one");
DEFINE_bool(decode, false, "read token ids and print the text");
DEFINE_bool(skip_special_tokens, false, "with --decode: leave out special tokens (<|im_end|>, ...)");
DEFINE_bool(stats, false, "print sizes and timings (load, encode/decode, tokens/s) on stderr");

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<int32_t> parse_ids(const std::string& input) {
  std::vector<int32_t> ids;
  std::istringstream words(input);
  std::string word;
  while (words >> word) {
    int32_t id = 0;
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), id);
    BVLLM_REQUIRE(ec == std::errc() && end == word.data() + word.size(), "stdin: '", word,
                  "' is not a token id (expected integers separated by whitespace)");
    ids.push_back(id);
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("bvllm_tokenize --tokenizer=PATH [--decode [--skip_special_tokens]] [--stats] < input");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  try {
    BVLLM_REQUIRE(!FLAGS_tokenizer.empty(), "--tokenizer is required (a tokenizer.json or a model directory)");
    BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "' (the input comes on stdin)");
    auto start = std::chrono::steady_clock::now();
    const bvllm::Qwen2Tokenizer tokenizer = bvllm::Qwen2Tokenizer::load(FLAGS_tokenizer);
    const double load_s = seconds_since(start);
    std::ios::sync_with_stdio(false);
    const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (FLAGS_decode) {
      const std::vector<int32_t> ids = parse_ids(input);
      start = std::chrono::steady_clock::now();
      const std::string text = tokenizer.decode(ids, FLAGS_skip_special_tokens);
      const double decode_s = seconds_since(start);
      std::cout << text;
      if (FLAGS_stats)
        std::cerr << "bvllm_tokenize: load " << load_s << " s; decode " << ids.size() << " tokens -> " << text.size()
                  << " bytes in " << decode_s << " s (" << static_cast<int64_t>(ids.size() / decode_s)
                  << " tokens/s)\n";
    } else {
      start = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = tokenizer.encode(input);
      const double encode_s = seconds_since(start);
      if (FLAGS_stats)
        std::cerr << "bvllm_tokenize: load " << load_s << " s; encode " << input.size() << " bytes -> " << ids.size()
                  << " tokens in " << encode_s << " s (" << static_cast<int64_t>(ids.size() / encode_s) << " tokens/s, "
                  << input.size() / encode_s / 1e6
                  << " MB/s; split regex JIT: " << (tokenizer.regex_jit() ? "on" : "off") << ")\n";
      std::string line;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i > 0) line += ' ';
        line += std::to_string(ids[i]);
      }
      std::cout << line << "\n";
    }
    std::cout.flush();
    BVLLM_REQUIRE(std::cout.good(), "cannot write to stdout");
  } catch (const std::exception& e) {
    std::cerr << "bvllm_tokenize: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
