// Small helpers for tests that check what a user is told.
#pragma once

#include <gtest/gtest.h>

#include <iomanip>
#include <sstream>
#include <string>

#include "runtime/error.h"

namespace bvllm::testing {

// The message of the bvllm::Error that `f` throws, or "(no error)" when it throws none (so a
// missing error fails any check that looks for text in the message).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Succeeds when `part` is in `text` (an error message, a log); the failure shows both.
inline ::testing::AssertionResult has(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" is not in: " << text;
}

// The same as a gtest assertion over anything convertible to std::string (a message, a log).
#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "expected '" << (part) << "' in: " << (text)

// `v` in scientific notation with three significant digits, for failure messages.
inline std::string sci(double v) {
  std::ostringstream out;
  out << std::scientific << std::setprecision(2) << v;
  return out.str();
}

}  // namespace bvllm::testing
