// bvllm_synth: the synthetic video QA dataset of the main job (data/synthetic.h): short videos of
// solid shapes, stage-1 captions, stage-2 questions of five types, a held-out test split with
// answers, and the small tokenizer and BERT vocab that a tiny B-VLLM trains with.
//
//   build/bin/bvllm_synth --out runs/synth                      # 1000 train + 200 test videos
//   build/bin/bvllm_prep --manifest runs/synth/stage1.json --media_root runs/synth --out ...
//
// Writes OUT/videos/*.mp4, OUT/stage1.json, OUT/stage2.json, OUT/test.json, OUT/tokenizer.json,
// OUT/bert_vocab.txt and OUT/README.txt (options and counts). Progress (done/total, videos/s, ETA)
// goes to stderr; the summary with the question counts per type to stdout. The same flags give
// the same files.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <unistd.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>

#include "data/synthetic.h"
#include "data/video_decoder.h"
#include "runtime/error.h"

DEFINE_string(out, "", "output directory (created if missing; files of an earlier run are overwritten)");
DEFINE_int64(train, 1000, "training videos (each scene kind a quarter: single, static, order, count)");
DEFINE_int64(test, 200, "held-out videos for test.json");
DEFINE_uint64(seed, 0, "dataset seed: the same seed gives the same scenes, texts and videos");
DEFINE_int32(size, 96, "frame width and height in pixels (even, >= 32)");
DEFINE_int32(seconds, 8, "video duration in seconds");
DEFINE_int32(fps, 8, "video frame rate");
DEFINE_string(codec, "", "FFmpeg video encoder (empty: libx264 when available, else mpeg4)");
DEFINE_int32(threads, 0, "encoding threads, one video each (0: one per hardware thread)");

namespace {

constexpr const char* kUsage =
    "--out DIR [--train N] [--test M] [--seed S] [--size 96] [--seconds 8] [--fps 8]\n"
    "Writes the synthetic video QA dataset of the main job into DIR (data/synthetic.h).";

using Clock = std::chrono::steady_clock;

// Whether a terminal progress line ("\r...") is showing, so that later output starts a new line.
bool progress_line_open = false;

void end_progress_line() {
  if (progress_line_open) std::cerr << "\n";
  progress_line_open = false;
}

int run() {
  BVLLM_REQUIRE(!FLAGS_out.empty(), "--out: required (the output directory)");
  BVLLM_REQUIRE(FLAGS_size > 0 && FLAGS_seconds > 0 && FLAGS_fps > 0, "--size, --seconds, --fps: must be positive");
  bvllm::data::synth::SynthOptions options;
  options.out = FLAGS_out;
  options.train = FLAGS_train;
  options.test = FLAGS_test;
  options.seed = FLAGS_seed;
  options.video = {.size = FLAGS_size, .seconds = FLAGS_seconds, .fps = FLAGS_fps};
  options.codec = FLAGS_codec;
  options.threads = FLAGS_threads;

  // libx264 prints its settings for every file at FFmpeg's info level; failures reach us as
  // exceptions with FFmpeg's message.
  bvllm::data::quiet_ffmpeg_log();

  const bool tty = ::isatty(2) != 0;
  const double interval = tty ? 0.5 : 5.0;
  const auto start = Clock::now();
  auto last = start;
  auto progress = [&](int64_t done, int64_t total) {
    const auto now = Clock::now();
    if (done < total && std::chrono::duration<double>(now - last).count() < interval) return;
    last = now;
    const double elapsed = std::chrono::duration<double>(now - start).count();
    const double rate = elapsed > 0 ? done / elapsed : 0;
    std::ostringstream line;
    line << "bvllm_synth: videos " << done << "/" << total << " (" << std::fixed << std::setprecision(1)
         << 100.0 * done / total << "%), " << rate << " videos/s, ETA " << (rate > 0 ? (total - done) / rate : 0.0)
         << " s";
    if (tty) {
      std::cerr << "\r" << line.str() << "\x1b[K" << std::flush;
      progress_line_open = true;
    } else {
      std::cerr << line.str() << "\n" << std::flush;
    }
  };
  const bvllm::data::synth::SynthSummary summary = bvllm::data::synth::write_synthetic_dataset(options, progress);
  end_progress_line();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

  std::cout << "bvllm_synth: " << summary.train_videos << " train + " << summary.test_videos << " test videos ("
            << FLAGS_size << "x" << FLAGS_size << ", " << FLAGS_seconds << " s at " << FLAGS_fps << " fps, "
            << summary.codec << ") in " << std::fixed << std::setprecision(1) << elapsed << " s into " << FLAGS_out
            << "\n";
  std::cout << "  stage1.json: " << summary.captions << " captions\n";
  for (const auto* counts : {&summary.train_questions, &summary.test_questions}) {
    std::cout << (counts == &summary.train_questions ? "  stage2.json:" : "  test.json:  ");
    int64_t total = 0;
    for (int t = 0; t < bvllm::data::synth::kQuestionTypes; ++t) {
      const std::string type(bvllm::data::synth::name(static_cast<bvllm::data::synth::QuestionType>(t)));
      const auto it = counts->find(type);
      const int64_t n = it == counts->end() ? 0 : it->second;
      total += n;
      std::cout << " " << type << " " << n;
    }
    std::cout << " (" << total << " questions)\n";
  }
  std::cout << "  tokenizer.json: " << summary.tokenizer_ids << " ids; bert_vocab.txt: " << summary.bert_tokens
            << " tokens\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(kUsage);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  try {
    BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "' (flags only; see --help)");
    return run();
  } catch (const std::exception& e) {
    end_progress_line();
    std::cerr << "bvllm_synth: " << e.what() << "\n";
    return 1;
  }
}
