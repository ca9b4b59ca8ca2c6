// decode_video / decode_image on videos the ffmpeg CLI generates here (constant and variable frame
// rate, a hole in time, a raw .h264 without timestamps, MPEG-TS with a start offset, rotation
// metadata, audio beside the video, BT.709/BT.601/BT.2020 and full-range colour, 1-s GOPs for
// seeking, truncated and corrupt files) and on opencv-doc's real sample videos (fetched by
// tests/data/fetch_test_videos.sh; those tests skip without them). The work the decoder skips by
// default (keyframe seeks, non-reference frames no target needs) is checked to change no frame
// against decode_all on every clip at three target rates.
//
// Which frame a target got is read from the pixels: the generated clips are lossless H.264 whose
// frame N is a flat grey of luma 16 + 2 * (N % 100), so the RGB value names the frame. Pixel
// references come from the ffmpeg CLI itself (its fps filter, select, autorotation and rgb24
// conversion with the same swscale flags), never from bvllm.
#include "data/video_decoder.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "data/clip_image.h"
#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

bool have_ffmpeg() {
  static const bool have = std::system("ffmpeg -version >/dev/null 2>&1") == 0;
  return have;
}

#define REQUIRE_FFMPEG() \
  if (!have_ffmpeg()) GTEST_SKIP() << "the ffmpeg command line is not installed (tools/setup.sh installs it)"

// A lossless clip whose frame N is grey with luma 16 + 2 * (N % 100): 160x120, 30 fps.
std::string coded(double seconds) {
  return R"(-f lavfi -i "color=black:s=160x120:r=30:d=)" + std::to_string(seconds) +
         R"(,geq=lum='16+mod(N\,100)*2':cb=128:cr=128")";
}
const std::string kLossless = " -c:v libx264 -qp 0 -pix_fmt yuv420p ";

// Test media, made with the ffmpeg CLI on first use into a directory removed at exit.
class Media {
 public:
  static Media& get() {
    static Media media;
    return media;
  }
  ~Media() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  const fs::path& dir() const { return dir_; }

  std::string path(const std::string& name) {
    const std::string file = (dir_ / name).string();
    if (made_.count(name)) return file;
    const auto recipe = recipes().find(name);
    if (recipe == recipes().end()) throw std::runtime_error("no recipe for " + name);
    run(recipe->second(file));
    made_[name] = true;
    return file;
  }

  static void run(const std::string& command) {
    if (std::system((command + " 2>&1").c_str()) != 0) throw std::runtime_error("failed: " + command);
  }

 private:
  Media() : dir_(fs::temp_directory_path() / ("bvllm_video_decoder_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
  }

  std::string ffmpeg() const { return "cd " + dir_.string() + " && ffmpeg -v error -y "; }

  using Recipe = std::function<std::string(const std::string& out)>;
  const std::map<std::string, Recipe>& recipes() {
    static const std::map<std::string, Recipe> all = {
        {"cfr.mp4", [&](const std::string& out) { return ffmpeg() + coded(10) + kLossless + out; }},
        // 30 fps until 4 s, every 4th frame (7.5 fps) from 4 to 8 s, 30 fps again until 12 s; the
        // frames keep their original times.
        {"vfr.mp4",
         [&](const std::string& out) {
           return ffmpeg() + coded(12) + R"( -vf "select='if(lt(t\,4)\,1\,if(lt(t\,8)\,not(mod(n\,4))\,1))'")" +
                  " -fps_mode passthrough" + kLossless + out;
         }},
        // No frame from 4 s to 7 s inclusive.
        {"gap.mp4",
         [&](const std::string& out) {
           return ffmpeg() + coded(12) + R"( -vf "select='not(between(t\,4\,7))'" -fps_mode passthrough)" + kLossless +
                  out;
         }},
        // Frames 60.. of a 10-s clip moved later by 30 s (a hole) or by 120 s (a discontinuity).
        {"jump30.mp4",
         [&](const std::string& out) {
           return ffmpeg() + coded(10) + R"( -vf "setpts='if(gte(N\,60)\,PTS+30/TB\,PTS)'" -fps_mode passthrough)" +
                  kLossless + out;
         }},
        {"jump120.mp4",
         [&](const std::string& out) {
           return ffmpeg() + coded(10) + R"( -vf "setpts='if(gte(N\,60)\,PTS+120/TB\,PTS)'" -fps_mode passthrough)" +
                  kLossless + out;
         }},
        {"raw.h264",
         [&](const std::string& out) { return ffmpeg() + "-i " + path("cfr.mp4") + " -c copy -f h264 " + out; }},
        {"cfr.ts",
         [&](const std::string& out) { return ffmpeg() + "-i " + path("cfr.mp4") + " -c copy -f mpegts " + out; }},
        // 4:4:4 so that rotating before or after the chroma upsampling gives the same pixels.
        {"src444.mp4",
         [&](const std::string& out) {
           return ffmpeg() + "-f lavfi -i testsrc=s=96x64:r=10:d=3 -c:v libx264 -qp 0 -pix_fmt yuv444p " + out;
         }},
        {"rot90.mp4",
         [&](const std::string& out) {
           return ffmpeg() + "-i " + path("src444.mp4") + " -c copy -metadata:s:v:0 rotate=90 " + out;
         }},
        {"av.mp4",
         [&](const std::string& out) {
           return ffmpeg() + coded(4) + " -f lavfi -i sine=f=440:d=4" + kLossless + "-c:a aac -shortest " + out;
         }},
        {"av_video_only.mp4",
         [&](const std::string& out) { return ffmpeg() + "-i " + path("av.mp4") + " -an -c copy " + out; }},
        {"audio.m4a", [&](const std::string& out) { return ffmpeg() + "-f lavfi -i sine=f=440:d=2 " + out; }},
        // An AVI whose video stream holds no frame.
        {"zero.avi",
         [&](const std::string& out) {
           return ffmpeg() + "-f lavfi -i testsrc=s=64x48:r=10:d=1 -frames:v 0 -c:v mpeg4 " + out;
         }},
        // 20 s with a keyframe every second (and B-frames): seeking ahead pays here.
        {"gop1.mp4", [&](const std::string& out) { return ffmpeg() + coded(20) + " -g 30 -bf 2" + kLossless + out; }},
        // x264 defaults (lossy, GOP 250), moov at the end or at the front.
        {"lossy.mp4",
         [&](const std::string& out) {
           return ffmpeg() + "-f lavfi -i testsrc2=s=320x240:r=30:d=10 -c:v libx264 " + out;
         }},
        {"faststart.mp4",
         [&](const std::string& out) {
           return ffmpeg() + "-i " + path("lossy.mp4") + " -c copy -movflags +faststart " + out;
         }},
        {"lossy.ts", [&](const std::string& out) { return ffmpeg() + "-i " + path("lossy.mp4") + " -c copy " + out; }},
        {"image.png",
         [&](const std::string& out) { return ffmpeg() + "-f lavfi -i testsrc2=s=200x150 -frames:v 1 " + out; }},
        {"image.jpg",
         [&](const std::string& out) { return ffmpeg() + "-f lavfi -i testsrc2=s=200x150 -frames:v 1 -q:v 3 " + out; }},
    };
    return all;
  }

  fs::path dir_;
  std::map<std::string, bool> made_;
};

std::string media(const std::string& name) { return Media::get().path(name); }

// A copy of `name` cut to `bytes` bytes.
std::string truncated(const std::string& name, size_t bytes) {
  const std::string in = media(name),
                    out = (Media::get().dir() / ("cut_" + std::to_string(bytes) + "_" + name)).string();
  std::ifstream src(in, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(src)), {});
  data.resize(std::min(bytes, data.size()));
  std::ofstream(out, std::ios::binary) << data;
  return out;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The RGB frames the ffmpeg CLI gives for `path` with the filter `vf` (may be empty), converted
// to rgb24 with the same swscale flags as decode_video, each h x w.
std::vector<Tensor> cli_frames(const std::string& path, const std::string& vf, int64_t h, int64_t w) {
  const std::string out = (Media::get().dir() / "cli.rgb").string();
  Media::run("ffmpeg -v error -y -i " + path + (vf.empty() ? "" : " -vf \"" + vf + "\"") +
             " -fps_mode passthrough -sws_flags bicubic+full_chroma_int -pix_fmt rgb24 -f rawvideo " + out);
  const std::string bytes = file_bytes(out);
  const auto frame_bytes = static_cast<size_t>(h * w * 3);
  std::vector<Tensor> frames;
  for (size_t at = 0; at + frame_bytes <= bytes.size(); at += frame_bytes) {
    Tensor t = Tensor::empty({h, w, 3}, DType::U8);
    std::copy_n(bytes.data() + at, frame_bytes, reinterpret_cast<char*>(t.data<uint8_t>()));
    frames.push_back(t);
  }
  EXPECT_EQ(bytes.size() % frame_bytes, 0u) << path << ": the CLI's output is not whole " << h << "x" << w << " frames";
  return frames;
}

::testing::AssertionResult same_pixels(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(a.shape()) << " vs " << shape_str(b.shape());
  const std::vector<int> va = a.to_vector<int>(), vb = b.to_vector<int>();
  for (size_t i = 0; i < va.size(); ++i)
    if (va[i] != vb[i])
      return ::testing::AssertionFailure()
             << "first difference at flat index " << i << ": " << va[i] << " vs " << vb[i];
  return ::testing::AssertionSuccess();
}

// The grey of coded frame N after limited-range BT.601 to RGB: (Y - 16) * 255 / 219.
int grey_of_frame(int64_t n) { return static_cast<int>(std::lround(2.0 * (n % 100) * 255.0 / 219.0)); }

// Checks that `frame` is coded frame N: every channel of a few pixels within 1 of its grey.
::testing::AssertionResult is_frame(const VideoFrame& frame, int64_t n) {
  const Tensor& rgb = frame.rgb;
  const int64_t h = rgb.size(0), w = rgb.size(1);
  for (const auto& [y, x] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {h / 2, w / 2}, {h - 1, w - 1}}) {
    for (int64_t c = 0; c < 3; ++c) {
      const int v = rgb.select(0, y).select(0, x).select(0, c).item<int>();
      if (std::abs(v - grey_of_frame(n)) > 1)
        return ::testing::AssertionFailure() << "at t=" << frame.timestamp << " pixel (" << y << "," << x << ") is "
                                             << v << ", frame " << n << " has " << grey_of_frame(n);
    }
  }
  return ::testing::AssertionSuccess();
}

DecodeOptions full_size() {
  DecodeOptions options;
  options.short_side = 0;
  return options;
}

// The frames of a coded constant-rate clip: target k at k + 0.5 s shows frame 30k + 15.
void expect_constant_rate(const DecodedVideo& video, int64_t seconds) {
  ASSERT_EQ(static_cast<int64_t>(video.frames.size()), seconds);
  for (int64_t k = 0; k < seconds; ++k) {
    EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 1e-9) << "target " << k;
    EXPECT_TRUE(is_frame(video.frames[k], 30 * k + 15)) << "target " << k;
  }
}

// --- generated videos ----------------------------------------------------------------------------

TEST(VideoDecoder, ConstantRateTakesTheFrameOnScreenAtEachHalfSecond) {
  REQUIRE_FFMPEG();
  const DecodedVideo video = decode_video(media("cfr.mp4"), full_size());
  expect_constant_rate(video, 10);
  EXPECT_DOUBLE_EQ(video.fps, 30.0);
  EXPECT_NEAR(video.duration, 10.0, 1e-9);
  EXPECT_EQ(video.decoded, 300);
  EXPECT_EQ(video.rotation, 0);
  EXPECT_EQ(video.frames[0].rgb.shape(), (Shape{120, 160, 3}));
}

TEST(VideoDecoder, ResizesTheShortSideWithPillowBicubic) {
  REQUIRE_FFMPEG();
  // testsrc2 has detail, so a different resampler would show.
  const DecodedVideo full = decode_video(media("lossy.mp4"), full_size());
  const DecodedVideo resized = decode_video(media("lossy.mp4"));  // short_side 336 by default
  ASSERT_EQ(resized.frames.size(), full.frames.size());
  ASSERT_EQ(resized.frames.size(), 10u);
  for (size_t i = 0; i < full.frames.size(); ++i) {
    ASSERT_EQ(resized.frames[i].rgb.shape(), (Shape{336, 448, 3}));
    EXPECT_TRUE(same_pixels(resized.frames[i].rgb, resize_bicubic_pil(full.frames[i].rgb, 336, 448))) << i;
    EXPECT_EQ(resized.frames[i].timestamp, full.frames[i].timestamp);
  }
  DecodeOptions small;
  small.short_side = 64;  // int(64 * 320 / 240) = 85
  EXPECT_EQ(decode_video(media("lossy.mp4"), small).frames[0].rgb.shape(), (Shape{64, 85, 3}));
}

TEST(VideoDecoder, VariableRateUsesTimestampsNotIndices) {
  REQUIRE_FFMPEG();
  const DecodedVideo video = decode_video(media("vfr.mp4"), full_size());
  // The frames the file holds (by construction) and, for each target, the last one at or before it.
  std::vector<int64_t> kept;
  for (int64_t n = 0; n < 360; ++n)
    if (n < 120 || n >= 240 || n % 4 == 0) kept.push_back(n);
  ASSERT_EQ(video.decoded, static_cast<int64_t>(kept.size()));
  ASSERT_EQ(video.frames.size(), 12u);
  for (int64_t k = 0; k < 12; ++k) {
    int64_t on_screen = kept[0];
    for (int64_t n : kept)
      if (n * 2 <= 60 * k + 30) on_screen = n;  // n / 30 <= k + 0.5, in integers
    EXPECT_NEAR(video.frames[k].timestamp, on_screen / 30.0, 1e-6) << "target " << k;
    EXPECT_TRUE(is_frame(video.frames[k], on_screen)) << "target " << k;
  }
  // Inside the 7.5-fps stretch the picks are not the constant-rate ones: frame 132 (4.4 s) for 4.5 s.
  EXPECT_TRUE(is_frame(video.frames[4], 132));
}

TEST(VideoDecoder, HoleInTimeRepeatsTheFrameOnScreen) {
  REQUIRE_FFMPEG();
  const DecodedVideo video = decode_video(media("gap.mp4"), full_size());
  ASSERT_EQ(video.frames.size(), 12u);  // time is not compressed: still one frame per second
  EXPECT_NEAR(video.duration, 12.0, 1e-6);
  for (int64_t k : {0, 1, 2, 3, 7, 8, 9, 10, 11}) {
    EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 1e-6);
    EXPECT_TRUE(is_frame(video.frames[k], 30 * k + 15));
  }
  // 4.5, 5.5 and 6.5 s fall in the hole: the frame before it (119, at 3.967 s) stays on screen.
  for (int64_t k : {4, 5, 6}) {
    EXPECT_NEAR(video.frames[k].timestamp, 119 / 30.0, 1e-6);
    EXPECT_TRUE(is_frame(video.frames[k], 119));
  }
  EXPECT_TRUE(video.frames[5].rgb.shares_storage(video.frames[4].rgb)) << "a repeated frame is converted once";
}

TEST(VideoDecoder, JumpsBeyondAMinuteAreDiscontinuities) {
  REQUIRE_FFMPEG();
  // 30 s later: a hole. Frame 59 (1.967 s) stays on screen until frame 60 at 32 s.
  const DecodedVideo hole = decode_video(media("jump30.mp4"), full_size());
  ASSERT_EQ(hole.frames.size(), 40u);
  EXPECT_NEAR(hole.duration, 40.0, 1e-6);
  for (int64_t k = 0; k < 40; ++k) {
    const int64_t n = k < 2 ? 30 * k + 15 : (k < 32 ? 59 : 30 * (k - 30) + 15);
    EXPECT_TRUE(is_frame(hole.frames[k], n)) << "target " << k;
    EXPECT_NEAR(hole.frames[k].timestamp, k < 2 || k >= 32 ? k + 0.5 : 59 / 30.0, 1e-6) << "target " << k;
  }
  // 120 s later: taken for a clock jump, so frame 60 follows frame 59 and the clip is its 10 s.
  const DecodedVideo jump = decode_video(media("jump120.mp4"), full_size());
  expect_constant_rate(jump, 10);
  EXPECT_NEAR(jump.duration, 10.0, 1e-6);
}

TEST(VideoDecoder, RawH264WithoutTimestampsCountsFrames) {
  REQUIRE_FFMPEG();
  // A raw elementary stream has no timestamps at all; the times come from the frame rate in the
  // SPS (30 fps) and the frame count.
  const DecodedVideo video = decode_video(media("raw.h264"), full_size());
  expect_constant_rate(video, 10);
  EXPECT_DOUBLE_EQ(video.fps, 30.0);
  EXPECT_NEAR(video.duration, 10.0, 1e-9);
  EXPECT_EQ(video.decoded, 300);
}

TEST(VideoDecoder, MpegTsTimesStartAtTheStreamStart) {
  REQUIRE_FFMPEG();
  // The MPEG-TS muxer starts the clock at 1.4 s; times are relative to the stream's start_time.
  const DecodedVideo video = decode_video(media("cfr.ts"), full_size());
  expect_constant_rate(video, 10);
  EXPECT_EQ(video.decoded, 300);
}

TEST(VideoDecoder, RotationMetadataTurnsFramesUpright) {
  REQUIRE_FFMPEG();
  // `-metadata:s:v:0 rotate=90` writes a display matrix that ffprobe reports as rotation=90
  // (counter-clockwise); the picture is made upright by turning it 270 degrees clockwise. The
  // reference is the ffmpeg CLI's autorotated output of the same frames.
  const std::string rotated = media("rot90.mp4");
  const DecodedVideo video = decode_video(rotated, full_size());
  EXPECT_EQ(video.rotation, 270);
  ASSERT_EQ(video.frames.size(), 3u);
  const std::vector<Tensor> cli = cli_frames(rotated, "select='eq(n\\,5)+eq(n\\,15)+eq(n\\,25)'", 96, 64);
  ASSERT_EQ(cli.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(video.frames[i].rgb.shape(), (Shape{96, 64, 3}));
    EXPECT_TRUE(same_pixels(video.frames[i].rgb, cli[i])) << "frame " << i;
  }
  // Without the metadata the same file is not turned.
  const DecodedVideo upright = decode_video(media("src444.mp4"), full_size());
  EXPECT_EQ(upright.rotation, 0);
  EXPECT_EQ(upright.frames[0].rgb.shape(), (Shape{64, 96, 3}));
  // And the short side is taken after turning: 64 -> 336 on the width.
  EXPECT_EQ(decode_video(rotated).frames[0].rgb.shape(), (Shape{504, 336, 3}));
}

TEST(VideoDecoder, AudioStreamIsIgnored) {
  REQUIRE_FFMPEG();
  const DecodedVideo with_audio = decode_video(media("av.mp4"), full_size());
  const DecodedVideo video_only = decode_video(media("av_video_only.mp4"), full_size());
  expect_constant_rate(with_audio, 4);
  ASSERT_EQ(with_audio.frames.size(), video_only.frames.size());
  for (size_t i = 0; i < with_audio.frames.size(); ++i) {
    EXPECT_EQ(with_audio.frames[i].timestamp, video_only.frames[i].timestamp);
    EXPECT_TRUE(same_pixels(with_audio.frames[i].rgb, video_only.frames[i].rgb));
  }
}

TEST(VideoDecoder, OtherRatesAndTheFrameCap) {
  REQUIRE_FFMPEG();
  DecodeOptions two = full_size();
  two.fps = 2;  // targets at 0.25, 0.75, ...: frames 7.5 -> 7, 22.5 -> 22, ...
  const DecodedVideo fast = decode_video(media("cfr.mp4"), two);
  ASSERT_EQ(fast.frames.size(), 20u);
  for (int64_t k = 0; k < 20; ++k) {
    const int64_t n = (30 * (2 * k + 1)) / 4;  // floor(30 * (k + 0.5) / 2)
    EXPECT_NEAR(fast.frames[k].timestamp, n / 30.0, 1e-6);
    EXPECT_TRUE(is_frame(fast.frames[k], n));
  }
  // Four of the ten targets, uniformly: floor((i + 0.5) * 10 / 4) = 1, 3, 6, 8. The MP4 knows its
  // duration up front; the raw stream does not, so its frames are subsampled at the end. Same picks.
  DecodeOptions capped = full_size();
  capped.max_frames = 4;
  for (const char* name : {"cfr.mp4", "raw.h264"}) {
    const DecodedVideo video = decode_video(media(name), capped);
    ASSERT_EQ(video.frames.size(), 4u) << name;
    const int64_t picks[4] = {1, 3, 6, 8};
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(video.frames[i].timestamp, picks[i] + 0.5, 1e-9) << name;
      EXPECT_TRUE(is_frame(video.frames[i], 30 * picks[i] + 15)) << name;
    }
  }
  // A clip shorter than half a period still gives one frame: its last.
  DecodeOptions slow = full_size();
  slow.fps = 0.05;  // one target at 10 s; the clip ends at 10 s
  const DecodedVideo one = decode_video(media("cfr.mp4"), slow);
  ASSERT_EQ(one.frames.size(), 1u);
  EXPECT_TRUE(is_frame(one.frames[0], 299));
}

::testing::AssertionResult same_frames(const DecodedVideo& a, const DecodedVideo& b) {
  if (a.frames.size() != b.frames.size())
    return ::testing::AssertionFailure() << a.frames.size() << " vs " << b.frames.size() << " frames";
  for (size_t k = 0; k < a.frames.size(); ++k) {
    if (a.frames[k].timestamp != b.frames[k].timestamp)
      return ::testing::AssertionFailure()
             << "target " << k << ": t=" << a.frames[k].timestamp << " vs " << b.frames[k].timestamp;
    if (auto same = same_pixels(a.frames[k].rgb, b.frames[k].rgb); !same) return same << " (target " << k << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST(VideoDecoder, SeekingAheadPicksTheSameFrames) {
  REQUIRE_FFMPEG();
  DecodeOptions all = full_size();
  all.decode_all = true;
  const DecodedVideo sought = decode_video(media("gop1.mp4"), full_size());
  const DecodedVideo forward = decode_video(media("gop1.mp4"), all);
  expect_constant_rate(sought, 20);
  expect_constant_rate(forward, 20);
  EXPECT_EQ(forward.decoded, 600);
  EXPECT_LT(sought.decoded, 400) << "with a keyframe every second the decoder should have skipped ahead";
}

TEST(VideoDecoder, SkippingUnneededFramesPicksTheSameFrames) {
  REQUIRE_FFMPEG();
  // x264's defaults (3 B-frames, most not references) on a 10-s clip: the non-reference frames
  // far from every target are not decoded.
  DecodeOptions all = full_size();
  all.decode_all = true;
  const DecodedVideo skipped = decode_video(media("lossy.mp4"), full_size());
  const DecodedVideo everything = decode_video(media("lossy.mp4"), all);
  EXPECT_EQ(everything.decoded, 300);
  EXPECT_LT(skipped.decoded, 250);
  EXPECT_TRUE(same_frames(skipped, everything));
  // The same on every generated clip, at three target rates (targets on frames, between frames,
  // sparse), MPEG-TS and the hole included.
  for (const char* name : {"cfr.mp4", "vfr.mp4", "gap.mp4", "gop1.mp4", "lossy.mp4", "lossy.ts", "faststart.mp4"}) {
    for (double fps : {1.0, 2.7, 0.3}) {
      DecodeOptions fast = full_size(), slow = all;
      fast.fps = slow.fps = fps;
      EXPECT_TRUE(same_frames(decode_video(media(name), fast), decode_video(media(name), slow)))
          << name << " at " << fps << " fps";
    }
  }
}

TEST(VideoDecoder, ThreadCountDoesNotChangeTheFrames) {
  REQUIRE_FFMPEG();
  DecodeOptions one = full_size(), three = full_size();
  one.threads = 1;
  three.threads = 3;
  const DecodedVideo a = decode_video(media("lossy.mp4"), one), b = decode_video(media("lossy.mp4"), three);
  ASSERT_EQ(a.frames.size(), 10u);
  ASSERT_EQ(a.frames.size(), b.frames.size());
  for (size_t i = 0; i < a.frames.size(); ++i) {
    EXPECT_EQ(a.frames[i].timestamp, b.frames[i].timestamp);
    EXPECT_TRUE(same_pixels(a.frames[i].rgb, b.frames[i].rgb)) << i;
  }
}

TEST(VideoDecoder, ColourMatrixAndRangeComeFromTheStream) {
  REQUIRE_FFMPEG();
  // RGB (200, 50, 20) encoded with each matrix and range and tagged accordingly; decoded with
  // the wrong matrix it comes out near (185, 34, 24), with the wrong range near (210, 38, 7).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"bt709", "out_color_matrix=bt709:out_range=tv -colorspace bt709"},
      {"bt601", "out_color_matrix=bt601:out_range=tv -colorspace smpte170m"},
      {"bt2020", "out_color_matrix=bt2020:out_range=tv -colorspace bt2020nc"},
      {"bt709_full", "out_color_matrix=bt709:out_range=pc -colorspace bt709 -color_range pc"},
  };
  for (const auto& [name, args] : cases) {
    const std::string out = (Media::get().dir() / ("colour_" + name + ".mp4")).string();
    const size_t split = args.find(' ');
    Media::run("ffmpeg -v error -y -f lavfi -i color=c=0xC83214:s=64x48:r=10:d=1 -vf scale=" + args.substr(0, split) +
               ",format=yuv444p" + args.substr(split) + " -c:v libx264 -qp 0 " + out);
    const DecodedVideo video = decode_video(out, full_size());
    ASSERT_FALSE(video.frames.empty());
    const std::vector<int> px = video.frames[0].rgb.select(0, 24).select(0, 32).to_vector<int>();
    EXPECT_NEAR(px[0], 200, 3) << name;
    EXPECT_NEAR(px[1], 50, 3) << name;
    EXPECT_NEAR(px[2], 20, 3) << name;
  }
}

TEST(VideoDecoder, TruncatedFileGivesItsPrefix) {
  REQUIRE_FFMPEG();
  // With the index at the front (faststart) or in a stream format (TS), a cut file decodes up to
  // the cut; frames keep their times.
  for (const char* name : {"faststart.mp4", "lossy.ts"}) {
    const std::string cut = truncated(name, file_bytes(media(name)).size() / 2);
    const DecodedVideo video = decode_video(cut, full_size());
    EXPECT_GE(video.frames.size(), 2u) << name;
    EXPECT_LT(video.frames.size(), 10u) << name;
    EXPECT_LT(video.decoded, 300) << name;
    for (size_t k = 0; k < video.frames.size(); ++k) EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 1e-6) << name;
  }
  // With the index (moov) at the end, the cut file cannot be opened.
  const std::string cut = truncated("lossy.mp4", file_bytes(media("lossy.mp4")).size() / 2);
  const std::string message = error_of([&] { decode_video(cut); });
  EXPECT_CONTAINS(message, cut + ": avformat_open_input failed: Invalid data found");
  try {
    decode_video(cut);
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.reason(), DecodeError::Reason::Undecodable);
    EXPECT_EQ(e.reason_name(), "undecodable");
  }
}

TEST(VideoDecoder, CorruptPacketsAreSkipped) {
  REQUIRE_FFMPEG();
  // Garbage over a stretch in the middle of the TS: the decoder conceals or drops what it cannot
  // decode and the rest comes out with the right times.
  std::string data = file_bytes(media("lossy.ts"));
  for (size_t i = data.size() / 3; i < data.size() / 3 + 20000 && i < data.size(); i += 7) data[i] = '\x5a';
  const std::string path = (Media::get().dir() / "corrupt.ts").string();
  std::ofstream(path, std::ios::binary) << data;
  const DecodedVideo video = decode_video(path, full_size());
  EXPECT_GE(video.frames.size(), 9u);
  for (size_t k = 0; k < video.frames.size(); ++k) EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 0.1);
}

// The reason of the DecodeError that `f` throws, and its message.
template <typename F>
std::pair<std::string, std::string> decode_error(F&& f) {
  try {
    f();
  } catch (const DecodeError& e) {
    return {std::string(e.reason_name()), e.what()};
  }
  return {"(no DecodeError)", ""};
}

TEST(VideoDecoder, FailuresSayWhyAndName) {
  REQUIRE_FFMPEG();
  const std::string missing = (Media::get().dir() / "no_such.mp4").string();
  auto [reason, message] = decode_error([&] { decode_video(missing); });
  EXPECT_EQ(reason, "missing file");
  EXPECT_CONTAINS(message, missing + ": no such file");

  std::tie(reason, message) = decode_error([&] { decode_video(media("audio.m4a")); });
  EXPECT_EQ(reason, "no video stream");
  EXPECT_CONTAINS(message, "audio.m4a: no video stream among its 1 stream(s)");

  std::tie(reason, message) = decode_error([&] { decode_video(media("zero.avi")); });
  EXPECT_EQ(reason, "zero frames");
  EXPECT_CONTAINS(message, "zero.avi: the video stream holds no frame");

  const std::string junk = (Media::get().dir() / "junk.mp4").string();
  std::string noise(20000, '\0');
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::ofstream(junk, std::ios::binary) << noise;
  std::tie(reason, message) = decode_error([&] { decode_video(junk); });
  EXPECT_EQ(reason, "undecodable");
  EXPECT_CONTAINS(message, junk + ": ");

  DecodeOptions bad;
  bad.fps = 0;
  EXPECT_CONTAINS(error_of([&] { decode_video(media("cfr.mp4"), bad); }), "DecodeOptions: fps 0 must be a positive");
  bad = {};
  bad.max_frames = 0;
  EXPECT_CONTAINS(error_of([&] { decode_video(media("cfr.mp4"), bad); }), "max_frames 0 must be >= 1");
  bad = {};
  bad.short_side = -1;
  EXPECT_CONTAINS(error_of([&] { decode_video(media("cfr.mp4"), bad); }), "short_side -1 must be >= 0");
  bad = {};
  bad.threads = -2;
  EXPECT_CONTAINS(error_of([&] { decode_video(media("cfr.mp4"), bad); }), "threads -2 must be >= 0");
}

// --- images --------------------------------------------------------------------------------------

TEST(DecodeImage, PngAndJpegAsTheFfmpegCliConvertsThem) {
  REQUIRE_FFMPEG();
  for (const char* name : {"image.png", "image.jpg"}) {  // rgb24 and full-range yuvj420p
    const DecodedVideo image = decode_image(media(name), full_size());
    ASSERT_EQ(image.frames.size(), 1u) << name;
    EXPECT_EQ(image.frames[0].timestamp, 0.0);
    EXPECT_EQ(image.decoded, 1);
    EXPECT_EQ(image.fps, 0.0);
    const std::vector<Tensor> cli = cli_frames(media(name), "", 150, 200);
    ASSERT_EQ(cli.size(), 1u) << name;
    EXPECT_TRUE(same_pixels(image.frames[0].rgb, cli[0])) << name;
    // Resized like a frame: short side 100, long int(100 * 200 / 150) = 133.
    DecodeOptions small;
    small.short_side = 100;
    const Tensor resized = decode_image(media(name), small).frames[0].rgb;
    EXPECT_TRUE(same_pixels(resized, resize_bicubic_pil(image.frames[0].rgb, 100, 133))) << name;
  }
  // A video given as an image: its first frame.
  const DecodedVideo first = decode_image(media("cfr.mp4"), full_size());
  ASSERT_EQ(first.frames.size(), 1u);
  EXPECT_TRUE(is_frame(first.frames[0], 0));
}

TEST(DecodeImage, DamagedOrMissingImagesAreRefused) {
  REQUIRE_FFMPEG();
  for (const char* name : {"image.jpg", "image.png"}) {
    const std::string cut = truncated(name, file_bytes(media(name)).size() * 6 / 10);
    const auto [reason, message] = decode_error([&] { decode_image(cut); });
    EXPECT_EQ(reason, "undecodable") << name << ": " << message;
    EXPECT_CONTAINS(message, cut + ": ");
  }
  const std::string text = (Media::get().dir() / "text.jpg").string();
  std::ofstream(text) << "hello, not a picture\n";
  EXPECT_EQ(decode_error([&] { decode_image(text); }).first, "undecodable");
  EXPECT_EQ(decode_error([&] { decode_image((Media::get().dir() / "gone.png").string()); }).first, "missing file");
  EXPECT_EQ(decode_error([&] { decode_image(media("audio.m4a")); }).first, "no video stream");
}

// --- opencv-doc's sample videos ------------------------------------------------------------------

std::string sample(const std::string& name) { return (fs::path(BVLLM_BINARY_DIR) / "test_videos" / name).string(); }

#define REQUIRE_SAMPLE(name)                                                                                 \
  if (!fs::exists(sample(name)))                                                                             \
  GTEST_SKIP() << sample(name) << " is missing: ctest's fixture tests/data/fetch_test_videos.sh fetches it " \
               << "(apt-get download opencv-doc)"

// Every 1-fps frame against the ffmpeg CLI's `-vf fps=1`, whose rule (the last frame before
// k + 0.5 s) is ours wherever no frame falls exactly on a half second, as in these two files.
void expect_like_cli_fps1(const std::string& path, const DecodedVideo& video) {
  ASSERT_FALSE(video.frames.empty());
  const int64_t h = video.frames[0].rgb.size(0), w = video.frames[0].rgb.size(1);
  const std::vector<Tensor> cli = cli_frames(path, "fps=1", h, w);
  ASSERT_EQ(cli.size(), video.frames.size());
  for (size_t k = 0; k < cli.size(); ++k) EXPECT_TRUE(same_pixels(video.frames[k].rgb, cli[k])) << "target " << k;
}

TEST(OpencvSamples, TreeAviHas68RealFramesNot444) {
  REQUIRE_SAMPLE("tree.avi");
  REQUIRE_FFMPEG();
  DecodeOptions options = full_size();
  options.decode_all = true;
  const DecodedVideo video = decode_video(sample("tree.avi"), options);
  EXPECT_EQ(video.decoded, 68);  // the header says 444: the rest are zero-size repeat chunks
  EXPECT_NEAR(video.fps, 15.0, 1e-3);
  ASSERT_EQ(video.frames.size(), 30u);  // 29.6 s
  // The frames on screen at 0.5, 1.5 and 2.5 s, as ffprobe lists the real frames' times.
  EXPECT_NEAR(video.frames[0].timestamp, 0.0, 1e-4);
  EXPECT_NEAR(video.frames[1].timestamp, 1.1333, 1e-4);
  EXPECT_NEAR(video.frames[2].timestamp, 2.4667, 1e-4);
  EXPECT_EQ(video.frames[0].rgb.shape(), (Shape{240, 320, 3}));
  expect_like_cli_fps1(sample("tree.avi"), video);
}

TEST(OpencvSamples, MegamindAviWithPackedBFramesAndAudio) {
  REQUIRE_SAMPLE("Megamind.avi");
  REQUIRE_FFMPEG();
  const DecodedVideo video = decode_video(sample("Megamind.avi"), full_size());
  EXPECT_NEAR(video.fps, 2997.0 / 125, 1e-9);
  ASSERT_EQ(video.frames.size(), 11u);
  expect_like_cli_fps1(sample("Megamind.avi"), video);
  DecodeOptions forward = full_size();
  forward.decode_all = true;
  const DecodedVideo all = decode_video(sample("Megamind.avi"), forward);
  EXPECT_EQ(all.decoded, 270);
  ASSERT_EQ(all.frames.size(), video.frames.size());
  for (size_t k = 0; k < all.frames.size(); ++k) {
    EXPECT_EQ(all.frames[k].timestamp, video.frames[k].timestamp);
    EXPECT_TRUE(same_pixels(all.frames[k].rgb, video.frames[k].rgb));
  }
}

TEST(OpencvSamples, MegamindBugyAviWithoutPts) {
  REQUIRE_SAMPLE("Megamind_bugy.avi");
  DecodeOptions options;
  options.decode_all = true;
  const DecodedVideo video = decode_video(sample("Megamind_bugy.avi"), options);
  EXPECT_EQ(video.decoded, 270);
  EXPECT_DOUBLE_EQ(video.fps, 30.0);
  ASSERT_EQ(video.frames.size(), 9u);  // 9.0 s
  for (size_t k = 0; k < 9; ++k) EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 1e-9);
  EXPECT_EQ(video.frames[0].rgb.shape(), (Shape{336, 458, 3}));  // 720x528 -> int(336 * 720 / 528)
}

TEST(OpencvSamples, VtestAvi) {
  REQUIRE_SAMPLE("vtest.avi");
  const DecodedVideo video = decode_video(sample("vtest.avi"));
  EXPECT_DOUBLE_EQ(video.fps, 10.0);
  ASSERT_EQ(video.frames.size(), 79u);  // 79.5 s
  for (size_t k = 0; k < video.frames.size(); ++k) EXPECT_NEAR(video.frames[k].timestamp, k + 0.5, 1e-9);
  EXPECT_EQ(video.frames[0].rgb.shape(), (Shape{336, 448, 3}));  // 768x576
  EXPECT_NEAR(video.duration, 79.5, 1e-9);
}

TEST(OpencvSamples, SkippingUnneededFramesPicksTheSameFrames) {
  for (const char* name : {"tree.avi", "Megamind.avi", "Megamind_bugy.avi", "vtest.avi"}) {
    REQUIRE_SAMPLE(name);
    for (double fps : {1.0, 2.7, 0.3}) {
      DecodeOptions fast, slow;
      fast.fps = slow.fps = fps;
      slow.decode_all = true;
      EXPECT_TRUE(same_frames(decode_video(sample(name), fast), decode_video(sample(name), slow)))
          << name << " at " << fps << " fps";
    }
  }
}

}  // namespace
}  // namespace bvllm::data
