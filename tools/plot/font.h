// A tiny bitmap font for chart labels: printable ASCII in 5x7 cells (the classic LCD character
// shapes) with two extra rows for the descenders of g, j, p, q, y and the comma.
#pragma once

#include <array>
#include <cstdint>

namespace bvllm::plot {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 9;   // 7 rows down to the baseline, 2 below it
inline constexpr int kGlyphAdvance = 6;  // one column of space between characters

// Rows top to bottom; bit 4 of a row is its leftmost pixel. Characters outside ' '..'~' get '?'.
const std::array<uint8_t, kGlyphHeight>& glyph(char c);

}  // namespace bvllm::plot
