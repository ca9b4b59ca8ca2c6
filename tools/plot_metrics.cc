// plot_metrics: a training run's loss and learning rate against step, as a PNG.
//
//   build/bin/plot_metrics --metrics=runs/stage1/metrics.jsonl --out=loss.png
//   build/bin/plot_metrics --metrics=runs/stage1/metrics.jsonl,runs/stage2/metrics.jsonl --out=both.png
//                          --title="tiny B-VLLM" --smooth=20
//
// Two panels share the step axis: the loss (each step thin and light, its trailing moving average
// over --smooth steps thick, evaluation losses as orange dots, NaN losses as red marks on the top
// edge) and the learning rate. Several files (comma-separated: stage 1, then stage 2) are drawn one
// after the other: each continues from the previous one's last step, with a dashed line between.
// The file format, and how repeated steps after a resume are read, is in tools/plot/metrics.h.
// Prints a line per run (steps, last loss, replaced lines) and the PNG's path.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <cmath>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tools/plot/chart.h"
#include "tools/plot/metrics.h"
#include "tools/plot/png_writer.h"

DEFINE_string(metrics, "", "RUN_DIR/metrics.jsonl, or several comma-separated to draw them one after the other");
DEFINE_string(out, "", "the PNG to write");
DEFINE_string(title, "", "the chart's title (default: the runs' names)");
DEFINE_int32(smooth, 0, "moving-average window of the loss in steps (0: about 1/50 of the longest run; 1: none)");
DEFINE_int32(width, 1000, "image width in pixels");
DEFINE_int32(height, 600, "image height in pixels");

namespace {

using bvllm::str_cat;

std::vector<std::string> split_paths(const std::string& list) {
  std::vector<std::string> paths;
  std::istringstream in(list);
  for (std::string path; std::getline(in, path, ',');) {
    BVLLM_REQUIRE(!path.empty(), "--metrics=", list, ": an empty path in the list");
    paths.push_back(path);
  }
  return paths;
}

// "stage1: steps 1-200 (200 losses), last loss 0.512 (mean of the last 7: 0.530), 3 evaluations, ..."
std::string summary(const bvllm::plot::RunMetrics& run, int window) {
  std::string text =
      str_cat(run.name, ": steps ", run.first_step(), "-", run.last_step(), " (", run.loss.size(), " losses)");
  std::vector<double> finite;
  int64_t nan = 0;
  for (const auto& p : run.loss) {
    if (std::isfinite(p.value))
      finite.push_back(p.value);
    else
      ++nan;
  }
  if (!finite.empty()) {
    const size_t n = std::min(finite.size(), static_cast<size_t>(window));
    double sum = 0;
    for (size_t i = finite.size() - n; i < finite.size(); ++i) sum += finite[i];
    text += str_cat(", last loss ", finite.back(), " (mean of the last ", n, ": ", sum / n, ")");
  }
  if (!run.eval_loss.empty())
    text += str_cat(", ", run.eval_loss.size(), " evaluations, last eval loss ", run.eval_loss.back().value);
  if (nan > 0) text += str_cat(", ", nan, " NaN losses");
  if (run.replaced > 0) text += str_cat(", ", run.replaced, " lines replaced by later ones (resumed run)");
  if (run.incomplete_last_line) text += ", an incomplete last line skipped";
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "plot_metrics --metrics=RUN_DIR/metrics.jsonl[,RUN_DIR2/metrics.jsonl] --out=PNG [--title=T] [--smooth=N] "
      "[--width=1000 --height=600]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  try {
    BVLLM_REQUIRE(!FLAGS_metrics.empty(), "--metrics is required (a run's metrics.jsonl)");
    BVLLM_REQUIRE(!FLAGS_out.empty(), "--out is required (the PNG to write)");
    BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "'");
    BVLLM_REQUIRE(FLAGS_smooth >= 0, "--smooth must be >= 0, not ", FLAGS_smooth);
    std::vector<bvllm::plot::RunMetrics> runs;
    for (const std::string& path : split_paths(FLAGS_metrics)) runs.push_back(bvllm::plot::read_metrics(path));
    const bvllm::plot::ChartOptions options{FLAGS_width, FLAGS_height, FLAGS_title, FLAGS_smooth};
    const bvllm::plot::Canvas canvas = bvllm::plot::draw_chart(runs, options);
    bvllm::plot::write_png(FLAGS_out, canvas);
    const int window = bvllm::plot::smooth_window(runs, FLAGS_smooth);
    for (const auto& run : runs) std::cout << "plot_metrics: " << summary(run, window) << "\n";
    std::cout << "plot_metrics: wrote " << FLAGS_out << " (" << canvas.width() << "x" << canvas.height() << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "plot_metrics: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
