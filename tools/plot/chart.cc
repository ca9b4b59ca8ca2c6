#include "tools/plot/chart.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <tuple>

#include "runtime/error.h"
#include "tools/plot/font.h"

namespace bvllm::plot {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr Rgb kTickTextColour{68, 68, 68};

// A value range mapped onto pixels [p0, p1] (p1 < p0 for the y axis, which points down).
struct Axis {
  double lo = 0, hi = 1;
  double p0 = 0, p1 = 1;
  double operator()(double v) const { return p0 + (v - lo) / (hi - lo) * (p1 - p0); }
};

// [lo, hi] of the finite values, widened by `margin` of its length (or by 1 unit / 10% of the
// value when all values are equal) so that curves do not run along the frame.
std::pair<double, double> padded_range(double lo, double hi, double margin) {
  if (hi > lo) {
    const double pad = (hi - lo) * margin;
    return {lo - pad, hi + pad};
  }
  const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
  return {lo - pad, hi + pad};
}

struct Panel {
  Rect box;  // the plot area; the frame is drawn on its edge
  Axis y;
  Ticks ticks;
  std::vector<std::string> labels;
};

// One run, placed on the shared step axis.
struct PlacedRun {
  const RunMetrics* run;
  int64_t offset;  // added to the run's steps
  std::vector<double> loss_mean;
};

int pixel(double p) { return static_cast<int>(std::floor(p)); }

void draw_dashed_vline(Canvas* canvas, int x, Rect box, int thickness, int dash, int gap, Rgb colour) {
  for (int y = box.y0; y < box.y1; y += dash + gap)
    canvas->fill({x - thickness / 2, y, x - thickness / 2 + thickness, std::min(y + dash, box.y1)}, colour);
}

// Text over a light halo of the background, so that it stays readable on top of curves.
void draw_label(Canvas* canvas, int x, int y, const std::string& text, int scale, Rgb colour) {
  canvas->fill({x - scale, y - scale, x + text_width(text, scale) + scale, y + text_height(scale)}, kBackground, 0.85);
  canvas->text(x, y, text, scale, colour);
}

}  // namespace

int smooth_window(const std::vector<RunMetrics>& runs, int smooth) {
  if (smooth > 0) return smooth;
  size_t longest = 0;
  for (const RunMetrics& run : runs) longest = std::max(longest, run.loss.size());
  return std::max(1, static_cast<int>(std::lround(static_cast<double>(longest) / 50)));
}

std::vector<double> moving_average(const std::vector<double>& values, int window) {
  CHECK_GE(window, 1);
  std::vector<double> mean(values.size(), kNaN);
  std::vector<double> last;  // the finite values so far; the window is their tail
  double sum = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) continue;
    last.push_back(values[i]);
    sum += values[i];
    if (static_cast<int>(last.size()) > window) sum -= last[last.size() - 1 - window];
    const size_t count = std::min(last.size(), static_cast<size_t>(window));
    // Recompute the sum now and then so that rounding errors do not pile up over long runs.
    if (last.size() % 4096 == 0) {
      sum = 0;
      for (size_t j = last.size() - count; j < last.size(); ++j) sum += last[j];
    }
    mean[i] = sum / static_cast<double>(count);
  }
  return mean;
}

Ticks nice_ticks(double lo, double hi, int max_ticks, bool integers) {
  CHECK(std::isfinite(lo) && std::isfinite(hi) && lo < hi) << lo << " " << hi;
  max_ticks = std::max(max_ticks, 2);
  int exponent = static_cast<int>(std::floor(std::log10((hi - lo) / max_ticks))) - 1;
  if (integers) exponent = std::max(exponent, 0);
  for (;; ++exponent) {
    for (const double m : {1.0, 2.0, 5.0}) {
      const double spacing = m * std::pow(10.0, exponent);
      // Integer multiples, with a little slack so that a tick on an end is not lost to rounding.
      const double first = std::ceil(lo / spacing - 1e-9), last = std::floor(hi / spacing + 1e-9);
      if (last - first + 1 > max_ticks) continue;
      Ticks ticks{{}, spacing};
      for (double i = first; i <= last; ++i) ticks.values.push_back(i * spacing);
      return ticks;
    }
  }
}

std::string format_tick(double value, double spacing) {
  if (std::abs(value) < spacing * 1e-6) return "0";
  const int spacing_exponent = static_cast<int>(std::floor(std::log10(spacing) + 1e-9));
  char text[64];
  if (spacing_exponent < -3 || spacing_exponent >= 6) {
    int exponent = static_cast<int>(std::floor(std::log10(std::abs(value)) + 1e-9));
    const int decimals = std::max(0, exponent - spacing_exponent);
    double mantissa = value / std::pow(10.0, exponent);
    std::snprintf(text, sizeof(text), "%.*f", decimals, mantissa);
    if (std::abs(std::atof(text)) >= 10) {  // 9.99 rounded up to 10.0
      ++exponent;
      mantissa /= 10;
      std::snprintf(text, sizeof(text), "%.*f", std::max(0, decimals - 1), mantissa);
    }
    std::string digits = text;
    if (digits.find('.') != std::string::npos) {
      digits.erase(digits.find_last_not_of('0') + 1);
      if (digits.back() == '.') digits.pop_back();
    }
    return digits + "e" + std::to_string(exponent);
  }
  std::snprintf(text, sizeof(text), "%.*f", std::max(0, -spacing_exponent), value);
  return text;
}

Canvas draw_chart(const std::vector<RunMetrics>& runs, const ChartOptions& options) {
  BVLLM_REQUIRE(options.width >= 200 && options.height >= 150, "the chart must be at least 200x150 pixels, not ",
                options.width, "x", options.height);
  CHECK(!runs.empty());
  const int window = smooth_window(runs, options.smooth);

  // The runs on one step axis, and the value ranges.
  std::vector<PlacedRun> placed;
  int64_t offset = 0;
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double loss_lo = x_lo, loss_hi = -x_lo, lr_lo = x_lo, lr_hi = -x_lo;
  bool any_eval = false, any_nan = false;
  for (const RunMetrics& run : runs) {
    std::vector<double> loss;
    for (const MetricPoint& p : run.loss) {
      loss.push_back(p.value);
      any_nan |= !std::isfinite(p.value);
    }
    placed.push_back({&run, offset, moving_average(loss, window)});
    if (run.first_step() > 0 || run.last_step() > 0) {
      x_lo = std::min(x_lo, static_cast<double>(offset + run.first_step()));
      x_hi = std::max(x_hi, static_cast<double>(offset + run.last_step()));
    }
    for (const MetricPoint& p : run.loss)
      if (std::isfinite(p.value)) loss_lo = std::min(loss_lo, p.value), loss_hi = std::max(loss_hi, p.value);
    for (const MetricPoint& p : run.eval_loss)
      loss_lo = std::min(loss_lo, p.value), loss_hi = std::max(loss_hi, p.value), any_eval = true;
    for (const MetricPoint& p : run.lr) lr_lo = std::min(lr_lo, p.value), lr_hi = std::max(lr_hi, p.value);
    offset += run.last_step();
  }
  if (!(loss_lo <= loss_hi)) {
    std::string paths;
    for (const RunMetrics& run : runs) paths += (paths.empty() ? "" : ", ") + run.path;
    throw Error(str_cat(paths, ": no finite \"loss\" value to plot"));
  }
  const bool any_lr = lr_lo <= lr_hi;
  const auto [loss_min, loss_max] = padded_range(loss_lo, loss_hi, 0.05);
  const auto [lr_min, lr_max] = any_lr ? padded_range(lr_lo, lr_hi, 0.05) : std::pair{0.0, 1.0};
  const double x_pad = std::max(0.5, (x_hi - x_lo) * 0.015);
  const double x_min = x_lo - x_pad, x_max = x_hi + x_pad;

  // Layout, in units of the font scale s (a 5x7 glyph drawn as 5s x 7s pixels).
  const int w = options.width, h = options.height;
  const int s = std::max(1, static_cast<int>(std::lround(std::min(w / 500.0, h / 300.0))));
  const int title_scale = s + 1;
  const int pad = 6 * s, tick = 3 * s, line = text_height(s);
  const int header = line + 3 * s;  // the panel name and legend above each panel
  const int top = pad + text_height(title_scale) + 4 * s;
  const int gap = 5 * s;                                        // between the loss panel and the lr panel's header
  const int bottom = tick + 2 * s + line + 3 * s + line + pad;  // x tick labels, "step", margin
  const int plots = h - top - 2 * header - gap - bottom;
  BVLLM_REQUIRE(plots >= 40, "the chart is too small for its labels: ", w, "x", h);
  const int loss_height = static_cast<int>(std::lround(plots * 0.62));

  Panel loss, lr;
  loss.box.y0 = top + header;
  loss.box.y1 = loss.box.y0 + loss_height;
  lr.box.y0 = loss.box.y1 + gap + header;
  lr.box.y1 = lr.box.y0 + (plots - loss_height);
  const int row_per_tick = 2 * line;  // at most one tick label per two lines of text
  for (auto [panel, lo, hi] : {std::tuple{&loss, loss_min, loss_max}, std::tuple{&lr, lr_min, lr_max}}) {
    const Rect& box = panel->box;
    panel->y = {lo, hi, static_cast<double>(box.y1), static_cast<double>(box.y0)};
    panel->ticks = nice_ticks(lo, hi, std::max(2, (box.y1 - box.y0) / row_per_tick));
    for (const double v : panel->ticks.values) panel->labels.push_back(format_tick(v, panel->ticks.spacing));
  }
  if (!any_lr) lr.ticks.values.clear(), lr.labels.clear();
  int label_width = 0;
  for (const Panel* panel : {&loss, &lr})
    for (const std::string& label : panel->labels) label_width = std::max(label_width, text_width(label, s));
  const int left = pad + label_width + 2 * s + tick;
  const int right = w - pad - text_width("00000", s) / 2;
  BVLLM_REQUIRE(right - left >= 60, "the chart is too narrow for its labels: ", w, "x", h);
  loss.box.x0 = lr.box.x0 = left;
  loss.box.x1 = lr.box.x1 = right;
  const Axis x{x_min, x_max, static_cast<double>(left), static_cast<double>(right)};
  const int x_max_ticks = std::max(2, (right - left) / (text_width("000000", s) + 6 * s));
  const Ticks x_ticks = nice_ticks(x_min, x_max, x_max_ticks, /*integers=*/true);

  Canvas canvas(w, h, kBackground);

  // Grid lines, under everything else.
  for (const Panel* panel : {&loss, &lr}) {
    const Rect& box = panel->box;
    for (const double v : panel->ticks.values) {
      const int y = pixel(panel->y(v));
      canvas.fill({box.x0, y, box.x1, y + 1}, kGridColour);
    }
    for (const double v : x_ticks.values) {
      const int px = pixel(x(v));
      canvas.fill({px, box.y0, px + 1, box.y1}, kGridColour);
    }
  }

  // Curves, clipped to their panel.
  const double thin = 0.75 * s + 0.5, thick = 1.25 * s + 0.5;
  for (size_t r = 0; r < placed.size(); ++r) {
    const RunMetrics& run = *placed[r].run;
    const double shift = static_cast<double>(placed[r].offset);
    std::vector<PointF> raw, mean, evals, rates;
    for (size_t i = 0; i < run.loss.size(); ++i) {
      const double px = x(shift + run.loss[i].step);
      const double value = run.loss[i].value;
      raw.push_back({px, std::isfinite(value) ? loss.y(value) : kNaN});
      if (std::isfinite(placed[r].loss_mean[i])) mean.push_back({px, loss.y(placed[r].loss_mean[i])});
      if (!std::isfinite(value))
        canvas.fill({pixel(px) - s / 2, loss.box.y0, pixel(px) - s / 2 + std::max(1, s), loss.box.y0 + 8 * s},
                    kNanColour);
    }
    for (const MetricPoint& p : run.eval_loss) evals.push_back({x(shift + p.step), loss.y(p.value)});
    for (const MetricPoint& p : run.lr) rates.push_back({x(shift + p.step), lr.y(p.value)});
    if (window > 1) canvas.polyline(raw, thin, kLossColour, loss.box, 0.35);
    canvas.polyline(window > 1 ? mean : raw, thick, kLossColour, loss.box);
    canvas.dots(evals, 2 * s + 0.5, kEvalColour, loss.box);
    canvas.polyline(rates, thick, kLrColour, lr.box);
  }

  // Where one run ends and the next begins, and the runs' names at the top right of their part.
  if (placed.size() > 1) {
    for (size_t r = 0; r < placed.size(); ++r) {
      const double end = r + 1 < placed.size() ? static_cast<double>(placed[r + 1].offset) + 0.5 : x_max;
      const int px = r + 1 < placed.size() ? pixel(x(end)) : loss.box.x1;
      if (r + 1 < placed.size())
        for (const Panel* panel : {&loss, &lr})
          draw_dashed_vline(&canvas, px, panel->box, s, 4 * s, 3 * s, kSeparatorColour);
      const std::string& name = placed[r].run->name;
      draw_label(&canvas, px - 3 * s - text_width(name, s), loss.box.y0 + 3 * s + (any_nan ? 8 * s : 0), name, s,
                 kSeparatorColour);
    }
  }

  // Frames, ticks and tick labels.
  for (const Panel* panel : {&loss, &lr}) {
    const Rect& b = panel->box;
    canvas.fill({b.x0 - 1, b.y0 - 1, b.x1 + 1, b.y0}, kAxisColour);
    canvas.fill({b.x0 - 1, b.y1, b.x1 + 1, b.y1 + 1}, kAxisColour);
    canvas.fill({b.x0 - 1, b.y0, b.x0, b.y1}, kAxisColour);
    canvas.fill({b.x1, b.y0, b.x1 + 1, b.y1}, kAxisColour);
    for (size_t i = 0; i < panel->ticks.values.size(); ++i) {
      const int y = pixel(panel->y(panel->ticks.values[i]));
      canvas.fill({b.x0 - 1 - tick, y, b.x0 - 1, y + 1}, kAxisColour);
      const std::string& label = panel->labels[i];
      canvas.text(b.x0 - 1 - tick - 2 * s - text_width(label, s), y - (7 * s) / 2, label, s, kTickTextColour);
    }
    for (const double v : x_ticks.values) {
      const int px = pixel(x(v));
      canvas.fill({px, b.y1 + 1, px + 1, b.y1 + 1 + tick}, kAxisColour);
    }
  }
  for (const double v : x_ticks.values) {
    const std::string label = format_tick(v, x_ticks.spacing);
    canvas.text(pixel(x(v)) - text_width(label, s) / 2, lr.box.y1 + 1 + tick + 2 * s, label, s, kTickTextColour);
  }
  const int step_y = lr.box.y1 + 1 + tick + 2 * s + line + 3 * s;
  canvas.text((left + right - text_width("step", s)) / 2, step_y, "step", s, kTextColour);
  if (!any_lr)
    canvas.text((left + right - text_width("no lr values", s)) / 2, (lr.box.y0 + lr.box.y1 - line) / 2, "no lr values",
                s, kTickTextColour);

  // Panel names at the left of their header, legends at the right.
  const int loss_header_y = loss.box.y0 - header + s, lr_header_y = lr.box.y0 - header + s;
  canvas.text(left, loss_header_y, "loss", s, kTextColour);
  canvas.text(left, lr_header_y, "learning rate", s, kTextColour);
  struct LegendItem {
    std::string text;
    Rgb colour;
    double alpha;
    enum { kLine, kThinLine, kDot, kMark } kind;
  };
  std::vector<LegendItem> items;
  if (window > 1) {
    items.push_back({"loss", kLossColour, 0.35, LegendItem::kThinLine});
    items.push_back({str_cat("mean of ", window), kLossColour, 1, LegendItem::kLine});
  } else {
    items.push_back({"loss", kLossColour, 1, LegendItem::kLine});
  }
  if (any_eval) items.push_back({"eval loss", kEvalColour, 1, LegendItem::kDot});
  if (any_nan) items.push_back({"NaN loss", kNanColour, 1, LegendItem::kMark});
  const int swatch = 6 * s;
  int legend_x = right;
  for (auto it = items.rbegin(); it != items.rend(); ++it) {
    legend_x -= text_width(it->text, s);
    canvas.text(legend_x, loss_header_y, it->text, s, kTextColour);
    legend_x -= s + swatch + s;
    const double mid = loss_header_y + 3.5 * s;
    const Rect area{legend_x, loss_header_y - s, legend_x + swatch + s, loss_header_y + line};
    switch (it->kind) {
      case LegendItem::kThinLine:
      case LegendItem::kLine:
        canvas.polyline({{legend_x + 0.5 * s, mid}, {legend_x + swatch + 0.5 * s, mid}},
                        it->kind == LegendItem::kLine ? thick : thin, it->colour, area, it->alpha);
        break;
      case LegendItem::kDot: canvas.dots({{legend_x + 3.5 * s, mid}}, 2 * s + 0.5, it->colour, area); break;
      case LegendItem::kMark:
        canvas.fill({legend_x + 3 * s, loss_header_y - s, legend_x + 4 * s, loss_header_y + 7 * s}, it->colour);
        break;
    }
    legend_x -= 10 * s;
  }

  // The title.
  std::string title = options.title;
  if (title.empty())
    for (const RunMetrics& run : runs) title += (title.empty() ? "" : " + ") + run.name;
  const int max_chars = (w - 2 * pad) / (kGlyphAdvance * title_scale);
  if (static_cast<int>(title.size()) > max_chars) title = title.substr(0, std::max(0, max_chars - 3)) + "...";
  canvas.text((w - text_width(title, title_scale)) / 2, pad, title, title_scale, kTextColour);
  return canvas;
}

}  // namespace bvllm::plot
