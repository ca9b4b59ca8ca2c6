// UTF-8 helpers shared by the tokenizers and the chat templates: validation, lossy decoding with
// U+FFFD as Python's bytes.decode("utf-8", errors="replace") does, and Python's str.strip().
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bvllm::utf8 {

// Offset of the first byte that does not start a well-formed UTF-8 sequence (Unicode 15, Table
// 3-7: no overlongs, no surrogates, nothing above U+10FFFF), or nullopt when `text` is valid.
std::optional<size_t> find_invalid(std::string_view text);

// Decodes bytes to valid UTF-8, replacing each maximal subpart of an ill-formed sequence by one
// U+FFFD (the "substitution of maximal subparts" practice of Unicode §3.9, which CPython's
// errors="replace", Rust's String::from_utf8_lossy and the WHATWG TextDecoder all follow). So a
// multibyte character cut at the end gives exactly one U+FFFD.
std::string decode_lossy(std::string_view bytes);

// Length of the well-formed sequence that starts at text[i] (1..4), or 0 when it is ill-formed.
size_t sequence_length(std::string_view text, size_t i);

// The code point of the well-formed sequence at text[i] (which must be valid).
char32_t code_point_at(std::string_view text, size_t i);

// Python's str.isspace(): the characters with bidirectional class WS, B or S or category Zs.
bool is_python_space(char32_t c);

// Unicode White_Space (what Rust's char::is_whitespace tests): is_python_space without U+001C..1F.
bool is_white_space(char32_t c);

// Python's str.strip() with no argument, on valid UTF-8.
std::string_view strip_python(std::string_view text);

// Appends the UTF-8 encoding of `c` (a scalar value) to `out`.
void append(std::string& out, char32_t c);

}  // namespace bvllm::utf8
