#include "tools/plot/canvas.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "tools/plot/font.h"

namespace bvllm::plot {
namespace {

// Distance from p to the segment ab.
double segment_distance(PointF p, PointF a, PointF b) {
  const double dx = b.x - a.x, dy = b.y - a.y;
  const double length2 = dx * dx + dy * dy;
  double t = length2 > 0 ? ((p.x - a.x) * dx + (p.y - a.y) * dy) / length2 : 0;
  t = std::clamp(t, 0.0, 1.0);
  const double ex = a.x + t * dx - p.x, ey = a.y + t * dy - p.y;
  return std::sqrt(ex * ex + ey * ey);
}

Rect intersect(Rect a, Rect b) {
  return {std::max(a.x0, b.x0), std::max(a.y0, b.y0), std::min(a.x1, b.x1), std::min(a.y1, b.y1)};
}

// Adds a shape of "radius" `half` around the segment ab (a disc when a == b) to `coverage`: a pixel
// whose centre lies at distance d gets half + 0.5 - d, clamped to [0, 1] (a box filter's area,
// approximately), so a line of width w has w - 1 fully covered pixels across and soft edges.
void cover_segment(PointF a, PointF b, double half, Rect clip, std::vector<float>* coverage) {
  const double reach = half + 0.5;
  const Rect box = intersect(clip, {static_cast<int>(std::floor(std::min(a.x, b.x) - reach)),
                                    static_cast<int>(std::floor(std::min(a.y, b.y) - reach)),
                                    static_cast<int>(std::ceil(std::max(a.x, b.x) + reach)) + 1,
                                    static_cast<int>(std::ceil(std::max(a.y, b.y) + reach)) + 1});
  const int clip_width = clip.x1 - clip.x0;
  for (int y = box.y0; y < box.y1; ++y) {
    for (int x = box.x0; x < box.x1; ++x) {
      const double d = segment_distance({x + 0.5, y + 0.5}, a, b);
      const float c = static_cast<float>(std::clamp(reach - d, 0.0, 1.0));
      float& slot = (*coverage)[static_cast<size_t>(y - clip.y0) * clip_width + (x - clip.x0)];
      slot = std::max(slot, c);
    }
  }
}

bool finite(PointF p) { return std::isfinite(p.x) && std::isfinite(p.y); }

}  // namespace

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
  CHECK(width > 0 && height > 0) << width << "x" << height;
  pixels_.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < pixels_.size(); i += 3) {
    pixels_[i] = background.r;
    pixels_[i + 1] = background.g;
    pixels_[i + 2] = background.b;
  }
}

Rgb Canvas::at(int x, int y) const {
  CHECK(x >= 0 && x < width_ && y >= 0 && y < height_) << x << "," << y;
  const uint8_t* p = &pixels_[(static_cast<size_t>(y) * width_ + x) * 3];
  return {p[0], p[1], p[2]};
}

void Canvas::blend(int x, int y, Rgb colour, double alpha) {
  if (x < 0 || x >= width_ || y < 0 || y >= height_ || !(alpha > 0)) return;
  alpha = std::min(alpha, 1.0);
  uint8_t* p = &pixels_[(static_cast<size_t>(y) * width_ + x) * 3];
  const uint8_t target[3] = {colour.r, colour.g, colour.b};
  for (int i = 0; i < 3; ++i) p[i] = static_cast<uint8_t>(std::lround(p[i] + (target[i] - p[i]) * alpha));
}

void Canvas::fill(Rect rect, Rgb colour, double alpha) {
  const Rect r = intersect(rect, {0, 0, width_, height_});
  for (int y = r.y0; y < r.y1; ++y)
    for (int x = r.x0; x < r.x1; ++x) blend(x, y, colour, alpha);
}

void Canvas::composite(const std::vector<float>& coverage, Rect clip, Rgb colour, double alpha) {
  const int clip_width = clip.x1 - clip.x0;
  for (int y = clip.y0; y < clip.y1; ++y)
    for (int x = clip.x0; x < clip.x1; ++x) {
      const float c = coverage[static_cast<size_t>(y - clip.y0) * clip_width + (x - clip.x0)];
      if (c > 0) blend(x, y, colour, c * alpha);
    }
}

void Canvas::polyline(const std::vector<PointF>& points, double width, Rgb colour, Rect clip, double alpha) {
  clip = intersect(clip, {0, 0, width_, height_});
  if (clip.x1 <= clip.x0 || clip.y1 <= clip.y0) return;
  std::vector<float> coverage(static_cast<size_t>(clip.x1 - clip.x0) * (clip.y1 - clip.y0), 0.0f);
  for (size_t i = 0; i < points.size(); ++i) {
    if (!finite(points[i])) continue;
    const bool joined = i + 1 < points.size() && finite(points[i + 1]);
    const bool alone = !joined && (i == 0 || !finite(points[i - 1]));
    // A point between two breaks is drawn as a dot, wider than the line so that it can be seen.
    if (joined) cover_segment(points[i], points[i + 1], width / 2, clip, &coverage);
    if (alone) cover_segment(points[i], points[i], width, clip, &coverage);
  }
  composite(coverage, clip, colour, alpha);
}

void Canvas::dots(const std::vector<PointF>& centres, double radius, Rgb colour, Rect clip) {
  clip = intersect(clip, {0, 0, width_, height_});
  if (clip.x1 <= clip.x0 || clip.y1 <= clip.y0) return;
  std::vector<float> coverage(static_cast<size_t>(clip.x1 - clip.x0) * (clip.y1 - clip.y0), 0.0f);
  for (const PointF& c : centres)
    if (finite(c)) cover_segment(c, c, radius, clip, &coverage);
  composite(coverage, clip, colour, 1);
}

void Canvas::text(int x, int y, std::string_view text, int scale, Rgb colour) {
  for (size_t i = 0; i < text.size(); ++i) {
    const auto& rows = glyph(text[i]);
    const int left = x + static_cast<int>(i) * kGlyphAdvance * scale;
    for (int row = 0; row < kGlyphHeight; ++row)
      for (int column = 0; column < kGlyphWidth; ++column)
        if (rows[row] & (0x10 >> column))
          fill({left + column * scale, y + row * scale, left + (column + 1) * scale, y + (row + 1) * scale}, colour);
  }
}

int text_width(std::string_view text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * kGlyphAdvance - 1) * scale;
}

int text_height(int scale) { return kGlyphHeight * scale; }

}  // namespace bvllm::plot
