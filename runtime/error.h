// Errors a user can cause (bad files, shapes from checkpoints, wrong arguments to ops).
// Programming invariants use glog CHECK instead; programs turn an Error into one line and exit 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace bvllm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates anything streamable: str_cat("expected ", 3, " dims").
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

}  // namespace bvllm

// Throws bvllm::Error with the streamed message when `cond` is false.
#define BVLLM_REQUIRE(cond, ...)                                      \
  do {                                                                \
    if (!(cond)) throw ::bvllm::Error(::bvllm::str_cat(__VA_ARGS__)); \
  } while (0)
