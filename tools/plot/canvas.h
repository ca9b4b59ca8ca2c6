// An RGB raster to draw charts on: filled rectangles, anti-aliased polylines and dots, and text in
// the bitmap font of font.h. Coordinates are pixels, x to the right and y down; pixel (x, y)
// covers [x, x + 1) x [y, y + 1), so its centre is (x + 0.5, y + 0.5).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace bvllm::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

struct PointF {
  double x = 0, y = 0;
};

// The pixels that drawing may touch: [x0, x1) x [y0, y1).
struct Rect {
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  Rgb at(int x, int y) const;
  // Rows top to bottom, 3 bytes (R, G, B) per pixel.
  const std::vector<uint8_t>& pixels() const { return pixels_; }

  // Mixes `colour` into a pixel with weight `alpha` in [0, 1]; pixels off the canvas are ignored.
  void blend(int x, int y, Rgb colour, double alpha);
  void fill(Rect rect, Rgb colour, double alpha = 1);

  // A line of `width` pixels through `points` with round joins and ends, clipped to `clip`. Each
  // pixel gets the coverage of the nearest segment, so the line has the same colour where
  // segments meet (no darker joints). A NaN coordinate breaks the line there.
  void polyline(const std::vector<PointF>& points, double width, Rgb colour, Rect clip, double alpha = 1);
  // Filled discs of `radius` pixels, anti-aliased, clipped to `clip`.
  void dots(const std::vector<PointF>& centres, double radius, Rgb colour, Rect clip);

  // Text with its top-left corner at (x, y), every font pixel drawn as a scale x scale square.
  void text(int x, int y, std::string_view text, int scale, Rgb colour);

 private:
  // Coverage in [0, 1] per pixel of `clip`, combined by max, then blended once.
  void composite(const std::vector<float>& coverage, Rect clip, Rgb colour, double alpha);

  int width_, height_;
  std::vector<uint8_t> pixels_;
};

// Width and height in pixels of `text` drawn at `scale` (one line; no trailing space).
int text_width(std::string_view text, int scale);
int text_height(int scale);

}  // namespace bvllm::plot
