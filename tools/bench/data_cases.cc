// Data pipeline cases: prep_decode (1-fps extraction, beside the ffmpeg CLI doing the same work).
// They need the ffmpeg command line (tools/setup.sh installs it) to make their input.
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "data/video_decoder.h"
#include "runtime/error.h"
#include "tools/bench/bench.h"

namespace bvllm::bench {

namespace {

namespace fs = std::filesystem;

// Runs a shell command, returning its wall time in milliseconds; a failure is an error naming it.
double run_timed(const std::string& command) {
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(command.c_str());
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  BVLLM_REQUIRE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "command failed: ", command);
  return ms;
}

// The bench clip, made once: 60 s of testsrc2 at 1280x720, 30 fps, x264 with its defaults
// (CRF 23, preset medium, GOP 250, 3 B-frames), as ../shared/research/data-pipeline.md §1.4 used.
std::string bench_clip() {
  const fs::path clip = fs::temp_directory_path() / "bvllm_bench_prep_decode_720p30_60s.mp4";
  if (fs::exists(clip)) return clip.string();
  BVLLM_REQUIRE(std::system("ffmpeg -version >/dev/null 2>&1") == 0,
                "prep_decode needs the ffmpeg command line to make its clip (tools/setup.sh installs it)");
  const std::string tmp = clip.string() + ".tmp.mp4";
  run_timed("ffmpeg -v error -y -f lavfi -i testsrc2=s=1280x720:r=30:d=60 -c:v libx264 -pix_fmt yuv420p " + tmp);
  fs::rename(tmp, clip);
  return clip.string();
}

double load_average() {
  double load[1] = {0};
  return getloadavg(load, 1) == 1 ? load[0] : -1;
}

// 1-fps frames of a 60-s 720p H.264 clip, resized to 336 on the short side, as bvllm_prep
// extracts them; beside it, in turn, the ffmpeg CLI's fps=1 + scale to the same size (raw output
// thrown away, its default threads) and decode_video with decode_all (no skipped work). The runs
// alternate so that load from other processes on the machine falls on all three alike.
Result prep_decode(const Options& options) {
  const std::string clip = bench_clip();
  const std::string cli = "ffmpeg -v error -i " + clip + " -vf fps=1,scale=-2:336 -f rawvideo -y /dev/null";
  const data::DecodeOptions decode{.fps = 1, .threads = 0, .short_side = 336};
  data::DecodeOptions all = decode;
  all.decode_all = true;

  int64_t frames = 0, decoded = 0, decoded_all = 0;
  double duration = 0;
  const auto ours = [&] {
    const auto start = std::chrono::steady_clock::now();
    const data::DecodedVideo video = data::decode_video(clip, decode);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    frames = static_cast<int64_t>(video.frames.size());
    decoded = video.decoded;
    duration = video.duration;
    return ms;
  };
  const auto everything = [&] {
    const auto start = std::chrono::steady_clock::now();
    decoded_all = data::decode_video(clip, all).decoded;
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };

  const double load_before = load_average();
  // Each iteration decodes a minute of video three times (~10 s here): at most 5 are timed.
  const int iters = std::min(options.iters, 5), warmup = std::min(options.warmup, 1);
  for (int i = 0; i < warmup; ++i) ours(), run_timed(cli), everything();
  Result r{"prep_decode", {}, {}};
  std::vector<double> cli_ms, all_ms;
  for (int i = 0; i < iters; ++i) {
    r.ms.push_back(ours());
    cli_ms.push_back(run_timed(cli));
    all_ms.push_back(everything());
  }
  BVLLM_REQUIRE(duration > 0, "prep_decode: the clip ", clip, " decoded to no duration");
  const double minutes = duration / 60.0;
  r.extra["ms_per_video_minute"] = median(r.ms) / minutes;
  r.extra["ffmpeg_ms_per_minute"] = median(cli_ms) / minutes;
  r.extra["decode_all_ms_per_minute"] = median(all_ms) / minutes;
  r.extra["speedup_vs_ffmpeg"] = median(cli_ms) / median(r.ms);
  r.extra["frames"] = static_cast<double>(frames);
  r.extra["decoded_frames"] = static_cast<double>(decoded);
  r.extra["decoded_frames_decode_all"] = static_cast<double>(decoded_all);
  r.extra["load_avg_before"] = load_before;
  r.extra["load_avg_after"] = load_average();
  return r;
}

}  // namespace

const std::vector<Case>& data_cases() {
  static const std::vector<Case> all = {
      {"prep_decode",
       "1-fps frames of a 60-s 720p30 H.264 clip resized to 336 short side (decode_video, all cores) vs the "
       "ffmpeg CLI's fps=1,scale; needs ffmpeg; at most 5 iterations",
       prep_decode},
  };
  return all;
}

}  // namespace bvllm::bench
