// The loss and learning-rate chart of one or more training runs (metrics.h): two panels that share
// the step axis, loss on top (each step's loss thin and light, its trailing moving average thick,
// evaluations as dots, NaN losses as red marks on the top edge) and lr below, with ticks, tick
// labels, a legend and a title. Runs given together are drawn one after the other: each run's steps
// continue from the previous run's last step, and a dashed line separates them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/plot/canvas.h"
#include "tools/plot/metrics.h"

namespace bvllm::plot {

// The colours of the chart; the tests look for the curves by colour.
inline constexpr Rgb kBackground{255, 255, 255};
inline constexpr Rgb kLossColour{31, 119, 180};  // the moving average; the raw loss is a light blend of it
inline constexpr Rgb kEvalColour{255, 127, 14};
inline constexpr Rgb kLrColour{44, 160, 44};
inline constexpr Rgb kNanColour{214, 39, 40};
inline constexpr Rgb kSeparatorColour{148, 103, 189};
inline constexpr Rgb kGridColour{228, 228, 228};
inline constexpr Rgb kAxisColour{40, 40, 40};
inline constexpr Rgb kTextColour{0, 0, 0};

struct ChartOptions {
  int width = 1000, height = 600;
  std::string title;  // empty: the runs' names
  int smooth = 0;     // moving-average window in steps; 0: smooth_window()'s choice
};

// The window used for smooth == 0: about 1/50 of the longest run's loss points, at least 1 (a
// trailing mean lags by half its window: 1% of the width).
int smooth_window(const std::vector<RunMetrics>& runs, int smooth);

// values[i] replaced by the mean of the last `window` finite values up to i (NaN where values[i]
// is not finite: those points are skipped, not averaged).
std::vector<double> moving_average(const std::vector<double>& values, int window);

struct Ticks {
  std::vector<double> values;
  double spacing = 1;
};
// The multiples of the smallest spacing of 1, 2 or 5 x 10^k (k >= 0 when `integers`) that puts at
// most `max_ticks` ticks in [lo, hi] (at least one spacing when max_ticks < 2).
Ticks nice_ticks(double lo, double hi, int max_ticks, bool integers = false);
// A tick label: as many decimals as the spacing needs ("0.5", "2", "0.001"), or the exponent form
// ("2.5e-4") when the spacing is below 1e-3 or at least 1e6.
std::string format_tick(double value, double spacing);

// Throws bvllm::Error when no run has a finite loss (nothing to draw) or the size is below 200x150.
Canvas draw_chart(const std::vector<RunMetrics>& runs, const ChartOptions& options);

}  // namespace bvllm::plot
