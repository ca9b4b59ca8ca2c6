#include "data/utf8.h"

#include <glog/logging.h>

namespace bvllm::utf8 {

namespace {

// Unicode 15 Table 3-7: the lead byte fixes the length and the range of the second byte; every
// later byte is 80..BF. Returns {length, lowest second byte, highest second byte}; length 0 for
// bytes that never start a sequence (80..C1, F5..FF).
struct Lead {
  int length;
  unsigned char lo, hi;
};

Lead lead_of(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};  // no surrogates
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};  // nothing above U+10FFFF
  return {0, 0, 0};
}

// Length of the maximal subpart at text[i]: the longest prefix of a well-formed sequence (at
// least 1), which is what one U+FFFD replaces.
size_t maximal_subpart(std::string_view text, size_t i) {
  const Lead lead = lead_of(static_cast<unsigned char>(text[i]));
  if (lead.length == 0 || i + 1 >= text.size()) return 1;
  const auto second = static_cast<unsigned char>(text[i + 1]);
  if (second < lead.lo || second > lead.hi) return 1;
  size_t n = 2;
  while (n < static_cast<size_t>(lead.length) && i + n < text.size()) {
    const auto c = static_cast<unsigned char>(text[i + n]);
    if (c < 0x80 || c > 0xBF) break;
    ++n;
  }
  return n;
}

}  // namespace

size_t sequence_length(std::string_view text, size_t i) {
  const Lead lead = lead_of(static_cast<unsigned char>(text[i]));
  if (lead.length <= 1) return lead.length;
  if (i + lead.length > text.size()) return 0;
  const auto second = static_cast<unsigned char>(text[i + 1]);
  if (second < lead.lo || second > lead.hi) return 0;
  for (int k = 2; k < lead.length; ++k) {
    const auto c = static_cast<unsigned char>(text[i + k]);
    if (c < 0x80 || c > 0xBF) return 0;
  }
  return lead.length;
}

std::optional<size_t> find_invalid(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = sequence_length(text, i);
    if (n == 0) return i;
    i += n;
  }
  return std::nullopt;
}

std::string decode_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t n = sequence_length(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      i += maximal_subpart(bytes, i);
    }
  }
  return out;
}

char32_t code_point_at(std::string_view text, size_t i) {
  const size_t n = sequence_length(text, i);
  CHECK_GT(n, 0u) << "invalid UTF-8 at byte " << i;
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(text[i + k])); };
  switch (n) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_python_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

std::string_view strip_python(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size() && is_python_space(code_point_at(text, begin))) begin += sequence_length(text, begin);
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;  // back up to the lead byte of the last character
    while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    if (!is_python_space(code_point_at(text, start))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

void append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

}  // namespace bvllm::utf8
