// plot_metrics end to end: metrics.jsonl files written here, the program run on them, and its PNG
// read back with libpng. The curves are found by their colours (tools/plot/chart.h) and checked
// against the data: a loss that falls linearly is a straight line going down to the right, the lr
// bends where its schedule does, resumed steps replace the earlier lines, a null loss is marked at
// its step, two runs sit one after the other around a separator. Bad input fails with one line
// naming the file and line. The helpers of tools/plot (ticks, labels, moving average, the reader)
// are checked on hand-computed cases.
#include <gtest/gtest.h>
#include <png.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "runtime/error.h"
#include "tools/plot/chart.h"
#include "tools/plot/metrics.h"

namespace bvllm::plot {
namespace {

namespace fs = std::filesystem;

const std::string kPlot = std::string(BVLLM_BINARY_DIR) + "/bin/plot_metrics";
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  Rgb at(int x, int y) const {
    const uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    return {p[0], p[1], p[2]};
  }
};

// The PNG as 8-bit RGB, read with libpng's simplified API; fails the test when the file is not an
// 8-bit RGB PNG.
Image read_png(const fs::path& path) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  Image image;
  if (!png_image_begin_read_from_file(&png, path.c_str())) {
    ADD_FAILURE() << path << ": " << png.message;
    return image;
  }
  EXPECT_EQ(png.format, static_cast<png_uint_32>(PNG_FORMAT_RGB)) << "an opaque colour image, no palette";
  png.format = PNG_FORMAT_RGB;
  image.width = static_cast<int>(png.width);
  image.height = static_cast<int>(png.height);
  image.rgb.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.rgb.data(), 0, nullptr)) {
    ADD_FAILURE() << path << ": " << png.message;
    image = {};
  }
  return image;
}

// Per column, the mean row of the pixels of exactly `colour` in rows [y0, y1) (a line drawn in
// that colour has such pixels along its middle; anti-aliased edges are mixed with the background).
std::map<int, double> curve(const Image& image, Rgb colour, int y0 = 0, int y1 = -1) {
  if (y1 < 0) y1 = image.height;
  std::map<int, double> rows;
  for (int x = 0; x < image.width; ++x) {
    double sum = 0;
    int count = 0;
    for (int y = y0; y < y1; ++y)
      if (image.at(x, y) == colour) sum += y, ++count;
    if (count > 0) rows[x] = sum / count;
  }
  return rows;
}

// Columns with at least `min_pixels` pixels of `colour` in rows [y0, y1) (vertical lines).
std::vector<int> columns_with(const Image& image, Rgb colour, int min_pixels, int y0 = 0, int y1 = -1) {
  if (y1 < 0) y1 = image.height;
  std::vector<int> columns;
  for (int x = 0; x < image.width; ++x) {
    int count = 0;
    for (int y = y0; y < y1; ++y) count += image.at(x, y) == colour;
    if (count >= min_pixels) columns.push_back(x);
  }
  return columns;
}

// The rows inside a panel's frame: [top, bottom).
struct Panel {
  int top = 0, bottom = 0;
};

// The loss panel and the lr panel, found by their frames: the only rows with a run of more than
// half the image's width in the axis colour are the top and bottom edges of the two frames.
std::vector<Panel> panels(const Image& image) {
  std::vector<int> edges;
  for (int y = 0; y < image.height; ++y) {
    int run = 0, longest = 0;
    for (int x = 0; x < image.width; ++x)
      longest = std::max(longest, run = image.at(x, y) == kAxisColour ? run + 1 : 0);
    if (longest > image.width / 2) edges.push_back(y);
  }
  EXPECT_EQ(edges.size(), 4u) << "two framed panels";
  if (edges.size() != 4) return {{0, image.height}, {0, image.height}};
  EXPECT_LT(edges[1], edges[2]) << "the lr panel below the loss panel";
  return {{edges[0] + 1, edges[1]}, {edges[2] + 1, edges[3]}};
}

// The mean of the curve's rows over the columns in [fraction0, fraction1] of its span.
double mean_row(const std::map<int, double>& rows, double fraction0, double fraction1) {
  const int first = rows.begin()->first, last = rows.rbegin()->first;
  double sum = 0;
  int count = 0;
  for (const auto& [x, y] : rows)
    if (x >= first + fraction0 * (last - first) && x <= first + fraction1 * (last - first)) sum += y, ++count;
  return count > 0 ? sum / count : kNaN;
}

class PlotMetrics : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kPlot)) << kPlot << " is not built";
    dir_ = fs::temp_directory_path() / ("plot_metrics_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    png_ = dir_ / "out.png";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `text` to RUN/metrics.jsonl under the test directory; returns its path.
  std::string write_metrics(const std::string& run, const std::string& text) {
    fs::create_directories(dir_ / run);
    const fs::path path = dir_ / run / "metrics.jsonl";
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }

  // Runs plot_metrics with `args`; returns its exit status, stdout and stderr together in `output`.
  int plot(const std::string& args, std::string* output) {
    const fs::path log = dir_ / "log.txt";
    const int status = std::system((kPlot + " " + args + " > " + log.string() + " 2>&1").c_str());
    *output = read_file(log);
    return status;
  }

  fs::path dir_, png_;
};

// One training line per step from `first` to `last`.
std::string lines(int first, int last, double (*loss)(int), double (*lr)(int)) {
  std::ostringstream out;
  out.precision(17);
  for (int step = first; step <= last; ++step)
    out << "{\"step\": " << step << ", \"loss\": " << loss(step) << ", \"lr\": " << lr(step)
        << ", \"grad_norm\": 1.5, \"tokens_per_s\": 800.0}\n";
  return out.str();
}

double falling(int step) { return 3.0 - 0.02 * (step - 1); }  // 3 at step 1, 1 at step 101
double warmup_then_constant(int step) { return 1e-3 * std::min(step, 51) / 51.0; }

TEST_F(PlotMetrics, AFallingLossGoesDownToTheRightAndTheLrFollowsItsSchedule) {
  const std::string metrics = write_metrics("run", lines(1, 101, falling, warmup_then_constant));
  std::string output;
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string() + " --smooth=1 --width=800 --height=500", &output),
            0)
      << output;
  EXPECT_NE(output.find("run: steps 1-101 (101 losses), last loss 1"), std::string::npos) << output;
  EXPECT_NE(output.find("wrote " + png_.string() + " (800x500)"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(png_.string() + ".tmp"));
  const Image image = read_png(png_);
  ASSERT_EQ(image.width, 800);
  ASSERT_EQ(image.height, 500);

  const std::vector<Panel> panel = panels(image);
  ASSERT_EQ(panel.size(), 2u);

  // The loss: a straight line from the top left to the bottom right (rows grow downwards).
  const std::map<int, double> loss = curve(image, kLossColour, panel[0].top, panel[0].bottom);
  ASSERT_GT(loss.size(), 400u) << "the loss curve spans most of the width";
  const int first = loss.begin()->first, last = loss.rbegin()->first;
  EXPECT_LT(first, 200);
  EXPECT_GT(last, 600);
  EXPECT_LT(mean_row(loss, 0, 0.1) + 100, mean_row(loss, 0.9, 1)) << "lower on the right";
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : loss) sx += x, sy += y, sxx += double(x) * x, sxy += x * y;
  const double n = static_cast<double>(loss.size());
  const double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx), intercept = (sy - slope * sx) / n;
  for (const auto& [x, y] : loss) EXPECT_NEAR(y, intercept + slope * x, 1.5) << "column " << x;

  // The lr: in the lower panel, over the same columns, rising to the middle step (51 of 1-101),
  // then flat.
  const std::map<int, double> lr = curve(image, kLrColour);
  ASSERT_FALSE(lr.empty());
  for (const auto& [x, y] : lr) EXPECT_TRUE(y >= panel[1].top && y < panel[1].bottom) << "column " << x;
  EXPECT_NEAR(lr.begin()->first, first, 2);
  EXPECT_NEAR(lr.rbegin()->first, last, 2);
  const double flat = mean_row(lr, 0.6, 1);
  for (const auto& [x, y] : lr)
    if (x > first + 0.55 * (last - first)) {
      EXPECT_NEAR(y, flat, 1) << "column " << x;
    }
  EXPECT_GT(lr.begin()->second, flat + 50) << "the warmup starts low";
  int knee = last;
  for (const auto& [x, y] : lr)
    if (std::abs(y - flat) <= 1) {
      knee = x;
      break;
    }
  EXPECT_NEAR(knee, first + 0.5 * (last - first), 0.03 * (last - first));
}

TEST_F(PlotMetrics, TheMovingAverageSmoothsANoisyLossAndTheRawLossStaysVisible) {
  std::ostringstream text;
  for (int step = 1; step <= 200; ++step)
    text << "{\"step\": " << step << ", \"loss\": " << (step % 2 ? 2 : 4) << ", \"lr\": 0.0001}\n";
  const std::string metrics = write_metrics("run", text.str());
  std::string output;
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string() + " --smooth=10", &output), 0) << output;
  EXPECT_NE(output.find("mean of the last 10: 3)"), std::string::npos) << output;
  const Image image = read_png(png_);
  ASSERT_EQ(image.width, 1000);
  ASSERT_EQ(image.height, 600);
  // After its first 10 steps the mean of 2, 4, 2, ... is 3: a flat line halfway between the raw
  // loss's extremes, which are drawn lighter (the same blue over white at 35%).
  const Panel panel = panels(image)[0];
  const std::map<int, double> mean = curve(image, kLossColour, panel.top, panel.bottom);
  ASSERT_GT(mean.size(), 500u);
  const double flat = mean_row(mean, 0.1, 1);
  for (const auto& [x, y] : mean)
    if (x > mean.begin()->first + 0.1 * (mean.rbegin()->first - mean.begin()->first)) {
      EXPECT_NEAR(y, flat, 1) << "column " << x;
    }
  const auto light = [](uint8_t c) { return static_cast<uint8_t>(std::lround(255 + (c - 255) * 0.35)); };
  const Rgb raw{light(kLossColour.r), light(kLossColour.g), light(kLossColour.b)};
  int above = 0, below = 0;
  for (int x = mean.begin()->first + 100; x < mean.rbegin()->first; ++x)
    for (int y = panel.top; y < panel.bottom; ++y)
      if (image.at(x, y) == raw) (y < flat ? above : below) += 1;
  EXPECT_GT(above, 100);
  EXPECT_GT(below, 100);
}

TEST_F(PlotMetrics, ResumedStepsAreReplacedByTheLaterLinesAndANullLossIsMarkedAtItsStep) {
  // A run that crashed at step 60 after a checkpoint at step 40 wrote a spike (loss 5) at 41-60;
  // the resumed run wrote 41-80 again, then failed with a NaN loss at step 81.
  const std::string metrics =
      write_metrics("run", lines(1, 40, falling, warmup_then_constant) +
                               lines(
                                   41, 60, [](int) { return 5.0; }, warmup_then_constant) +
                               lines(41, 80, falling, warmup_then_constant) + "{\"step\": 81, \"loss\": null}\n");
  std::string output;
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string() + " --smooth=1", &output), 0) << output;
  EXPECT_NE(output.find("run: steps 1-81 (81 losses)"), std::string::npos) << output;
  EXPECT_NE(output.find("1 NaN losses, 20 lines replaced by later ones (resumed run)"), std::string::npos) << output;
  const Image image = read_png(png_);
  const Panel panel = panels(image)[0];
  const std::map<int, double> loss = curve(image, kLossColour, panel.top, panel.bottom);
  ASSERT_GT(loss.size(), 500u);
  // Falling all the way: no spike from the replaced lines (the first column's row is the highest).
  double previous = 0;
  for (const auto& [x, y] : loss) {
    EXPECT_GE(y, previous - 1) << "column " << x;
    EXPECT_GE(y, loss.begin()->second - 1) << "column " << x;
    previous = y;
  }
  // The NaN mark (a red tick on the loss panel's top edge) at step 81, one step right of the curve's
  // end at step 80.
  const double step_width = (loss.rbegin()->first - loss.begin()->first) / 79.0;
  const std::vector<int> marks = columns_with(image, kNanColour, 12, panel.top, panel.top + 20);
  ASSERT_FALSE(marks.empty());
  EXPECT_LE(marks.back() - marks.front(), 3) << "one mark";
  EXPECT_NEAR(marks.front(), loss.rbegin()->first + step_width, 3);
  EXPECT_TRUE(columns_with(image, kNanColour, 1, panel.top + 20, panel.bottom).empty()) << "only on the top edge";
}

TEST_F(PlotMetrics, TwoRunsAreDrawnOneAfterTheOtherAroundASeparator) {
  const std::string stage1 = write_metrics("stage1", lines(
                                                         1, 100, [](int) { return 3.0; }, warmup_then_constant));
  const std::string stage2 = write_metrics("stage2", lines(
                                                         1, 50, [](int) { return 1.0; }, [](int) { return 1e-4; }) +
                                                         "{\"step\": 50, \"eval_loss\": 2}\n");
  std::string output;
  ASSERT_EQ(plot("--metrics=" + stage1 + "," + stage2 + " --out=" + png_.string() + " --smooth=1", &output), 0)
      << output;
  EXPECT_NE(output.find("stage1: steps 1-100 (100 losses)"), std::string::npos) << output;
  EXPECT_NE(output.find("stage2: steps 1-50 (50 losses), last loss 1 (mean of the last 1: 1), 1 evaluations"),
            std::string::npos)
      << output;
  const Image image = read_png(png_);
  const Panel panel = panels(image)[0];
  const std::map<int, double> loss = curve(image, kLossColour, panel.top, panel.bottom);
  ASSERT_FALSE(loss.empty());
  // The dashed separator (long, in both panels; the runs' names are drawn in its colour too, but
  // they are short) between the two runs, at step 100.5 of 1-150.
  const std::vector<int> separator = columns_with(image, kSeparatorColour, 100);
  ASSERT_FALSE(separator.empty());
  ASSERT_LE(separator.back() - separator.front(), 2) << "one line";
  const int first = loss.begin()->first, last = loss.rbegin()->first;
  EXPECT_NEAR(separator.front(), first + (100.5 - 1) / (150 - 1) * (last - first), 3);
  // Left of it the loss of 3, right of it the loss of 1, lower.
  const double left = mean_row(loss, 0, 0.6), right = mean_row(loss, 0.7, 1);
  EXPECT_LT(left + 50, right);
  for (const auto& [x, y] : loss) {
    if (std::abs(x - separator.front()) <= 4) continue;  // the round ends of the two curves
    EXPECT_NEAR(y, x < separator.front() ? left : right, 1) << "column " << x;
  }
  // The evaluation at stage 2's step 50 (150 on the axis): an orange dot at the right end of the
  // curve, halfway between the losses of 3 and 1 since it is 2.
  const std::map<int, double> eval = curve(image, kEvalColour, panel.top, panel.bottom);
  ASSERT_FALSE(eval.empty());
  EXPECT_NEAR((eval.begin()->first + eval.rbegin()->first) / 2.0, last, 3);
  EXPECT_NEAR(mean_row(eval, 0, 1), (left + right) / 2, 2);
}

TEST_F(PlotMetrics, TheTitleIsDrawnAboveThePanels) {
  const std::string metrics = write_metrics("run", lines(1, 20, falling, warmup_then_constant));
  std::string output;
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string() + " --title=A", &output), 0) << output;
  const Image short_title = read_png(png_);
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string() + " '--title=Loss of the tiny B-VLLM'", &output), 0)
      << output;
  const Image long_title = read_png(png_);
  ASSERT_EQ(short_title.rgb.size(), long_title.rgb.size());
  // Above the loss panel's header (its name and legend, one line of text above the frame).
  const int panel_top = panels(long_title)[0].top - 30;
  ASSERT_GT(panel_top, 0);
  int changed = 0, text = 0;
  for (int y = 0; y < long_title.height; ++y)
    for (int x = 0; x < long_title.width; ++x) {
      if (short_title.at(x, y) == long_title.at(x, y)) continue;
      ++changed;
      EXPECT_LT(y, panel_top) << "only the title changes: pixel " << x << "," << y;
      text += long_title.at(x, y) == kTextColour;
    }
  EXPECT_GT(changed, 200);
  EXPECT_GT(text, 200) << "the title is black text";
}

TEST_F(PlotMetrics, AnIncompleteLastLineIsSkippedButABadLineElsewhereIsAnError) {
  const std::string good = lines(1, 10, falling, warmup_then_constant);
  std::string metrics = write_metrics("killed", good + "{\"step\": 11, \"lo");
  std::string output;
  ASSERT_EQ(plot("--metrics=" + metrics + " --out=" + png_.string(), &output), 0) << output;
  EXPECT_NE(output.find("killed: steps 1-10 (10 losses)"), std::string::npos) << output;
  EXPECT_NE(output.find("an incomplete last line skipped"), std::string::npos) << output;

  metrics = write_metrics("broken", good + "{\"step\": 11, \"lo\n" + lines(12, 12, falling, warmup_then_constant));
  EXPECT_NE(plot("--metrics=" + metrics + " --out=" + png_.string(), &output), 0);
  EXPECT_TRUE(output.starts_with("plot_metrics: " + metrics + ":11: not JSON (")) << output;
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << output;
}

TEST_F(PlotMetrics, BadInputIsOneLineNamingTheFileAndTheLine) {
  const fs::path out = dir_ / "bad.png";
  const std::string good = "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\n";
  const std::pair<std::string, std::string> cases[] = {
      {good + "{\"step\": \"seven\", \"loss\": 2}\n", ":2: \"step\" must be an integer >= 0, got \"seven\""},
      {good + good + "{\"step\": 3, \"loss\": \"high\"}\n", ":3: \"loss\" must be a number or null, got \"high\""},
      {good + "{\"step\": -1, \"loss\": 2}\n", ":2: \"step\" must be an integer >= 0, got -1"},
      {good + "{\"loss\": 2}\n", ":2: no \"step\""},
      {"\n" + good + "[1, 2]\n", ":3: expected a JSON object like {\"step\": 1, \"loss\": 2.5}, got [1,2]"},
      {"{\"step\": 1, \"lr\": 0.001}\n{\"step\": 2, \"loss\": null}\n", ": no finite \"loss\" value to plot"},
  };
  for (const auto& [text, message] : cases) {
    const std::string metrics = write_metrics("bad", text);
    std::string output;
    EXPECT_NE(plot("--metrics=" + metrics + " --out=" + out.string(), &output), 0);
    EXPECT_EQ(output, "plot_metrics: " + metrics + message + "\n");
    EXPECT_FALSE(fs::exists(out));
  }
  std::string output;
  const std::string missing = (dir_ / "nowhere" / "metrics.jsonl").string();
  EXPECT_NE(plot("--metrics=" + missing + " --out=" + out.string(), &output), 0);
  EXPECT_EQ(output, "plot_metrics: " + missing + ": cannot open (No such file or directory)\n");
  EXPECT_NE(plot("--metrics=" + write_metrics("good", good), &output), 0);
  EXPECT_EQ(output, "plot_metrics: --out is required (the PNG to write)\n");
  EXPECT_NE(plot("--metrics=" + write_metrics("good", good) + " --out=" + (dir_ / "no" / "x.png").string(), &output),
            0);
  EXPECT_EQ(output,
            "plot_metrics: " + (dir_ / "no" / "x.png").string() + ": cannot write (No such file or directory)\n");
}

// The helpers, on cases worked out by hand.

TEST(PlotTicks, NiceTicksAreTheMultiplesOfTheSmallestSpacingThatFits) {
  Ticks t = nice_ticks(0.3, 6.7, 7);
  EXPECT_EQ(t.spacing, 1);
  EXPECT_EQ(t.values, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  t = nice_ticks(0.3, 6.7, 5);  // 1 gives 6 ticks: too many
  EXPECT_EQ(t.spacing, 2);
  EXPECT_EQ(t.values, (std::vector<double>{2, 4, 6}));
  t = nice_ticks(-5e-5, 1.05e-3, 6);
  EXPECT_DOUBLE_EQ(t.spacing, 2e-4);
  ASSERT_EQ(t.values.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(t.values[i], 2e-4 * i, 1e-18);
  t = nice_ticks(-4.5, 305.5, 10, /*integers=*/true);  // 20 would give 16 ticks
  EXPECT_EQ(t.spacing, 50);
  EXPECT_EQ(t.values, (std::vector<double>{0, 50, 100, 150, 200, 250, 300}));
  t = nice_ticks(0.5, 3.5, 10, /*integers=*/true);  // never between steps
  EXPECT_EQ(t.spacing, 1);
  EXPECT_EQ(t.values, (std::vector<double>{1, 2, 3}));
}

TEST(PlotTicks, LabelsShowWhatTheSpacingNeeds) {
  EXPECT_EQ(format_tick(0.5, 0.5), "0.5");
  EXPECT_EQ(format_tick(2, 0.5), "2.0");
  EXPECT_EQ(format_tick(-1, 0.5), "-1.0");
  EXPECT_EQ(format_tick(250, 50), "250");
  EXPECT_EQ(format_tick(0.003, 0.001), "0.003");
  EXPECT_EQ(format_tick(0.25, 0.05), "0.25");
  EXPECT_EQ(format_tick(2e-4, 2e-4), "2e-4");
  EXPECT_EQ(format_tick(1.2e-4, 2e-5), "1.2e-4");
  EXPECT_EQ(format_tick(1e-4, 2e-5), "1e-4");
  EXPECT_EQ(format_tick(1e-17, 2e-5), "0") << "a rounding error of the zero tick";
  EXPECT_EQ(format_tick(3e6, 1e6), "3e6");
}

TEST(PlotMovingAverage, TrailingMeanOverTheFiniteValues) {
  const std::vector<double> mean = moving_average({1, 3, kNaN, 5, 7, 9}, 2);
  ASSERT_EQ(mean.size(), 6u);
  EXPECT_EQ(mean[0], 1);
  EXPECT_EQ(mean[1], 2);
  EXPECT_TRUE(std::isnan(mean[2]));
  EXPECT_EQ(mean[3], 4);
  EXPECT_EQ(mean[4], 6);
  EXPECT_EQ(mean[5], 8);
  EXPECT_EQ(moving_average({4, 2}, 10), (std::vector<double>{4, 3}));
}

TEST(PlotMetricsReader, EvaluationsResumesAndNonFiniteValues) {
  std::istringstream in(
      "{\"step\": 1, \"loss\": 4, \"lr\": 0.1}\n"
      "\n"
      "{\"step\": 2, \"loss\": 3, \"lr\": 0.2, \"samples_per_s\": 3.1}\n"
      "{\"step\": 2, \"eval_loss\": 3.5}\n"
      "{\"step\": 3, \"loss\": 9, \"lr\": 0.3}\n"
      "{\"step\": 4, \"loss\": 9, \"lr\": 0.4}\n"
      "{\"step\": 4, \"eval_loss\": 9.5}\n"
      "{\"step\": 0, \"event\": \"started\"}\n"
      "{\"step\": 3, \"loss\": 2, \"lr\": 0.3}\r\n"  // resumed from step 2: drops 3, 4 and the eval at 4
      "{\"step\": 4, \"loss\": NaN, \"lr\": 0.4}\n"
      "{\"step\": 5, \"loss\": null, \"lr\": Infinity}\n");
  const RunMetrics run = parse_metrics(in, "runs/x/metrics.jsonl");
  EXPECT_EQ(run.name, "x");
  ASSERT_EQ(run.loss.size(), 5u);
  const double want_loss[] = {4, 3, 2, kNaN, kNaN};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(run.loss[i].step, static_cast<int64_t>(i + 1));
    if (std::isnan(want_loss[i]))
      EXPECT_TRUE(std::isnan(run.loss[i].value)) << i;
    else
      EXPECT_EQ(run.loss[i].value, want_loss[i]) << i;
  }
  ASSERT_EQ(run.lr.size(), 4u) << "an infinite lr is left out";
  EXPECT_EQ(run.lr.back().step, 4);
  EXPECT_EQ(run.lr.back().value, 0.4);
  ASSERT_EQ(run.eval_loss.size(), 1u);
  EXPECT_EQ(run.eval_loss[0].step, 2);
  EXPECT_EQ(run.eval_loss[0].value, 3.5);
  EXPECT_EQ(run.replaced, 3) << "steps 3 and 4 and the evaluation at 4";
  EXPECT_EQ(run.lines, 9) << "the line with no value is not counted";
  EXPECT_EQ(run.first_step(), 1);
  EXPECT_EQ(run.last_step(), 5);
  EXPECT_FALSE(run.incomplete_last_line);

  std::istringstream strings("{\"step\": 1, \"loss\": 1, \"note\": \"NaN stays a string\"}\n");
  EXPECT_EQ(parse_metrics(strings, "log.jsonl").name, "log");
  std::istringstream float_step("{\"step\": 2.5, \"loss\": 1}\n");
  EXPECT_THROW(
      {
        try {
          parse_metrics(float_step, "m.jsonl");
        } catch (const Error& e) {
          EXPECT_STREQ(e.what(), "m.jsonl:1: \"step\" must be an integer >= 0, got 2.5");
          throw;
        }
      },
      Error);
}

}  // namespace
}  // namespace bvllm::plot
