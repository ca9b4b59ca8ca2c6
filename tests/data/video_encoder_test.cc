// VideoEncoder: frames we draw come back from data/video_decoder.h with their timestamps and (up to
// the codec's loss) their pixels, for libx264 and FFmpeg's mpeg4; ffprobe (when installed) reads the
// stream as declared (codec, frame count, rate, yuv420p, BT.601 tags); the same frames give the
// same bytes; bad options, frames and paths throw errors that name them; an unfinished encoder
// leaves no file.
#include "data/video_encoder.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "data/video_decoder.h"
#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

constexpr int kWidth = 64, kHeight = 48, kFps = 8, kFrames = 16;

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("bvllm_video_encoder_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path_);
    quiet_ffmpeg_log();  // libx264 prints its settings for every file
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

TempDir& temp() {
  static TempDir dir;
  return dir;
}

// Frame k: a grey background (60) with a 16x16 block at x = 2k, y = 16 whose colour depends on k.
std::array<uint8_t, 3> block_colour(int k) {
  return {static_cast<uint8_t>(200 - 8 * k), static_cast<uint8_t>(40 + 8 * k), static_cast<uint8_t>(k % 2 ? 220 : 50)};
}
std::vector<uint8_t> test_frame(int k) {
  std::vector<uint8_t> rgb(static_cast<size_t>(kWidth) * kHeight * 3, 60);
  const auto colour = block_colour(k);
  for (int y = 16; y < 32; ++y)
    for (int x = 2 * k; x < 2 * k + 16; ++x)
      for (int c = 0; c < 3; ++c) rgb[(static_cast<size_t>(y) * kWidth + x) * 3 + c] = colour[c];
  return rgb;
}

std::string encode_test_video(const std::string& name, const std::string& codec) {
  const std::string path = temp().file(name);
  VideoEncoder encoder(path, {.width = kWidth, .height = kHeight, .fps = kFps, .codec = codec});
  for (int k = 0; k < kFrames; ++k) encoder.add_frame(test_frame(k));
  EXPECT_EQ(encoder.frames(), kFrames);
  encoder.finish();
  return path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool have_encoder(const std::string& codec) {
  const std::string path = temp().file("probe_" + codec + ".mp4");
  try {
    VideoEncoder encoder(path, {.width = 16, .height = 16, .fps = 1, .codec = codec});
    return true;
  } catch (const Error&) {
    return false;
  }
}

class VideoEncoderCodec : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!have_encoder(GetParam())) GTEST_SKIP() << "this FFmpeg has no " << GetParam() << " encoder";
  }
};

TEST_P(VideoEncoderCodec, DecodesBackToTheFramesAtTheirTimes) {
  const std::string path = encode_test_video("roundtrip_" + GetParam() + ".mp4", GetParam());
  const DecodedVideo video = decode_video(path, {.fps = kFps, .threads = 1, .short_side = 0});
  ASSERT_EQ(video.frames.size(), static_cast<size_t>(kFrames));
  EXPECT_DOUBLE_EQ(video.fps, kFps);
  EXPECT_NEAR(video.duration, static_cast<double>(kFrames) / kFps, 1e-9);
  for (int k = 0; k < kFrames; ++k) {
    const VideoFrame& frame = video.frames[static_cast<size_t>(k)];
    EXPECT_NEAR(frame.timestamp, static_cast<double>(k) / kFps, 1e-9) << "frame " << k;
    ASSERT_EQ(frame.rgb.shape(), (Shape{kHeight, kWidth, 3}));
    const std::vector<uint8_t> want = test_frame(k);
    const uint8_t* got = frame.rgb.contiguous().data<uint8_t>();
    double total = 0;
    for (size_t i = 0; i < want.size(); ++i) total += std::abs(int{got[i]} - int{want[i]});
    EXPECT_LT(total / static_cast<double>(want.size()), 3.0) << "mean abs error of frame " << k;
    // The block's middle (away from chroma-subsampled edges) keeps its colour, up to the codec's loss
    // on a block whose colour jumps every frame.
    const auto colour = block_colour(k);
    const size_t middle = (static_cast<size_t>(24) * kWidth + 2 * k + 8) * 3;
    for (int c = 0; c < 3; ++c)
      EXPECT_NEAR(got[middle + static_cast<size_t>(c)], colour[static_cast<size_t>(c)], 16)
          << "frame " << k << " channel " << c;
  }
}

TEST_P(VideoEncoderCodec, SameFramesGiveTheSameBytes) {
  const std::string a = encode_test_video("same_a_" + GetParam() + ".mp4", GetParam());
  const std::string b = encode_test_video("same_b_" + GetParam() + ".mp4", GetParam());
  const std::string bytes = read_bytes(a);
  EXPECT_GT(bytes.size(), 100u);
  EXPECT_TRUE(bytes == read_bytes(b)) << "two encodes of the same frames differ";
}

// ffprobe, not our decoder, reads what the stream declares.
TEST_P(VideoEncoderCodec, FfprobeSeesTheDeclaredStream) {
  if (std::system("ffprobe -version >/dev/null 2>&1") != 0) GTEST_SKIP() << "ffprobe is not installed";
  const std::string path = encode_test_video("ffprobe_" + GetParam() + ".mp4", GetParam());
  const std::string out = temp().file("ffprobe_" + GetParam() + ".txt");
  ASSERT_EQ(std::system(("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                         "stream=codec_name,width,height,pix_fmt,r_frame_rate,nb_read_frames,color_space,color_range "
                         "-of default=noprint_wrappers=1 " +
                         path + " > " + out)
                            .c_str()),
            0);
  const std::string probe = read_bytes(out);
  EXPECT_CONTAINS(probe, GetParam() == "libx264" ? "codec_name=h264" : "codec_name=mpeg4");
  EXPECT_CONTAINS(probe, "width=64");
  EXPECT_CONTAINS(probe, "height=48");
  EXPECT_CONTAINS(probe, "pix_fmt=yuv420p");
  EXPECT_CONTAINS(probe, "r_frame_rate=8/1");
  EXPECT_CONTAINS(probe, "nb_read_frames=16");
  EXPECT_CONTAINS(probe, "color_range=tv");
  EXPECT_CONTAINS(probe, "color_space=smpte170m");
}

INSTANTIATE_TEST_SUITE_P(Codecs, VideoEncoderCodec, ::testing::Values("libx264", "mpeg4"));

TEST(VideoEncoder, DefaultCodecIsH264WhenAvailable) {
  EXPECT_EQ(default_video_codec(), have_encoder("libx264") ? "libx264" : "mpeg4");
  VideoEncoder encoder(temp().file("default.mp4"), {.width = 16, .height = 16});
  EXPECT_EQ(encoder.codec(), default_video_codec());
}

TEST(VideoEncoder, TensorFramesOfAnyStrides) {
  // A [H, W, 3] view of a [W, H, 3] tensor (transposed strides) is packed before encoding.
  const std::string path = temp().file("tensor.mp4");
  {
    VideoEncoder encoder(path, {.width = kWidth, .height = kHeight, .fps = kFps, .codec = "mpeg4"});
    const std::vector<uint8_t> rgb = test_frame(3);
    Tensor frame = Tensor::from(std::span<const uint8_t>(rgb), {kHeight, kWidth, 3});
    Tensor transposed = frame.transpose(0, 1).contiguous().transpose(0, 1);
    ASSERT_FALSE(transposed.is_contiguous());
    encoder.add_frame(transposed);
    EXPECT_CONTAINS(error_of([&] {
                      encoder.add_frame(Tensor::empty({kHeight, kWidth, 3}, DType::F32));
                    }),
                    "expected a u8 [48, 64, 3] CPU tensor");
    encoder.finish();
  }
  const DecodedVideo video = decode_video(path, {.fps = kFps, .threads = 1, .short_side = 0});
  ASSERT_EQ(video.frames.size(), 1u);
  const auto colour = block_colour(3);
  const uint8_t* got = video.frames[0].rgb.contiguous().data<uint8_t>();
  EXPECT_NEAR(got[(static_cast<size_t>(24) * kWidth + 14) * 3], colour[0], 8);
}

TEST(VideoEncoder, ErrorsNameWhatIsWrong) {
  const std::string path = temp().file("bad.mp4");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(path, {.width = 15, .height = 16}); }), "must be positive and even");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(path, {.width = 16, .height = 16, .fps = 0}); }), "fps 0");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(path, {.width = 16, .height = 16, .codec = "no_such_codec"}); }),
                  "codec \"no_such_codec\"");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(path, {.width = 16, .height = 16, .codec = "aac"}); }),
                  "is not a video encoder");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(path, {.width = 16, .height = 16, .crf = 60}); }), "crf 60");
  const std::string missing_dir = temp().file("no_such_dir/x.mp4");
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(missing_dir, {.width = 16, .height = 16}); }), missing_dir);
  EXPECT_CONTAINS(error_of([&] { VideoEncoder(temp().file("x.unknown_extension"), {.width = 16, .height = 16}); }),
                  "x.unknown_extension");

  VideoEncoder encoder(path, {.width = 16, .height = 16, .codec = "mpeg4"});
  EXPECT_CONTAINS(error_of([&] { encoder.add_frame(std::vector<uint8_t>(10)); }), "frame 0 has 10 bytes, expected 768");
  EXPECT_CONTAINS(error_of([&] { encoder.finish(); }), "at least one frame");
}

TEST(VideoEncoder, UnfinishedEncoderLeavesNoFile) {
  const std::string path = temp().file("unfinished.mp4");
  {
    VideoEncoder encoder(path, {.width = 16, .height = 16, .codec = "mpeg4"});
    encoder.add_frame(std::vector<uint8_t>(16 * 16 * 3, 100));
    EXPECT_TRUE(fs::exists(path));
  }
  EXPECT_FALSE(fs::exists(path));
}

}  // namespace
}  // namespace bvllm::data
