// encode_jpeg / decode_jpeg (TurboJPEG): the round trip keeps the picture, the bytes are a baseline
// 4:2:0 JPEG whose size follows the quality, strided inputs encode like their contiguous copy, a
// JPEG from another encoder (the ffmpeg CLI's mjpeg) decodes to what that CLI decodes, damaged
// data is refused (a truncated file too), and both work from several threads at once.
#include "data/jpeg.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "runtime/error.h"
#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

using testing::error_of;

// A smooth test picture (gradients and a soft disc), which JPEG keeps well.
Tensor test_image(int64_t h, int64_t w) {
  Tensor image = Tensor::empty({h, w, 3}, DType::U8);
  uint8_t* p = image.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const double r = std::hypot(y - h / 2.0, x - w / 2.0) / (std::min(h, w) / 2.0);
      p[(y * w + x) * 3 + 0] = static_cast<uint8_t>(255.0 * x / (w - 1));
      p[(y * w + x) * 3 + 1] = static_cast<uint8_t>(255.0 * y / (h - 1));
      p[(y * w + x) * 3 + 2] = static_cast<uint8_t>(r < 0.6 ? 200 : 40 + 100 * std::exp(-(r - 0.6) * 3));
    }
  }
  return image;
}

// Mean and max absolute difference of two u8 images of one shape.
std::pair<double, int> difference(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const std::vector<int> va = a.to_vector<int>(), vb = b.to_vector<int>();
  double sum = 0;
  int max = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    const int d = std::abs(va[i] - vb[i]);
    sum += d;
    max = std::max(max, d);
  }
  return {sum / static_cast<double>(va.size()), max};
}

// The luma and chroma sampling factors from the JPEG's start-of-frame segment.
struct Frame {
  int marker = 0, height = 0, width = 0, components = 0;
  int sampling[3] = {0, 0, 0};  // (h << 4) | v per component
};
Frame start_of_frame(const std::string& jpeg) {
  Frame f;
  const auto* b = reinterpret_cast<const uint8_t*>(jpeg.data());
  size_t i = 2;  // after SOI
  while (i + 4 <= jpeg.size() && b[i] == 0xFF) {
    const int marker = b[i + 1];
    const size_t length = (b[i + 2] << 8) | b[i + 3];
    if (marker >= 0xC0 && marker <= 0xC2) {
      f.marker = marker;
      f.height = (b[i + 5] << 8) | b[i + 6];
      f.width = (b[i + 7] << 8) | b[i + 8];
      f.components = b[i + 9];
      for (int c = 0; c < f.components && c < 3; ++c) f.sampling[c] = b[i + 10 + c * 3 + 1];
      return f;
    }
    i += 2 + length;
  }
  return f;
}

TEST(Jpeg, RoundTripKeepsThePicture) {
  const Tensor image = test_image(120, 160);
  const std::string jpeg = encode_jpeg(image);
  const Tensor back = decode_jpeg(jpeg, "round trip");
  ASSERT_EQ(back.shape(), (Shape{120, 160, 3}));
  EXPECT_EQ(back.dtype(), DType::U8);
  const auto [mean, max] = difference(image, back);
  EXPECT_LT(mean, 2.0) << "max " << max;
  EXPECT_LT(max, 40);
  // 8-24x smaller than raw at q90 on real frames (§2.4); a smooth picture shrinks more.
  EXPECT_LT(jpeg.size(), image.nbytes() / 8);
}

TEST(Jpeg, BaselineFourTwoZero) {
  const std::string jpeg = encode_jpeg(test_image(50, 70));
  ASSERT_GE(jpeg.size(), 4u);
  EXPECT_EQ(static_cast<uint8_t>(jpeg[0]), 0xFF);
  EXPECT_EQ(static_cast<uint8_t>(jpeg[1]), 0xD8);  // SOI
  EXPECT_EQ(static_cast<uint8_t>(jpeg[jpeg.size() - 2]), 0xFF);
  EXPECT_EQ(static_cast<uint8_t>(jpeg.back()), 0xD9);  // EOI
  const Frame f = start_of_frame(jpeg);
  EXPECT_EQ(f.marker, 0xC0);  // baseline
  EXPECT_EQ(f.height, 50);
  EXPECT_EQ(f.width, 70);
  ASSERT_EQ(f.components, 3);
  EXPECT_EQ(f.sampling[0], 0x22);  // luma 2x2 per chroma sample: 4:2:0
  EXPECT_EQ(f.sampling[1], 0x11);
  EXPECT_EQ(f.sampling[2], 0x11);
}

TEST(Jpeg, QualityTradesSizeForError) {
  const Tensor image = test_image(96, 128);
  const std::string low = encode_jpeg(image, 30), mid = encode_jpeg(image), high = encode_jpeg(image, 98);
  EXPECT_LT(low.size(), mid.size());
  EXPECT_LT(mid.size(), high.size());
  EXPECT_GT(difference(image, decode_jpeg(low, "q30")).first, difference(image, decode_jpeg(high, "q98")).first);
}

TEST(Jpeg, StridedInputEncodesLikeItsCopy) {
  const Tensor big = test_image(64, 90);
  const Tensor view = big.slice(0, 5, 53).slice(1, 7, 71, 2);  // not contiguous
  ASSERT_FALSE(view.is_contiguous());
  EXPECT_EQ(encode_jpeg(view), encode_jpeg(view.contiguous()));
  EXPECT_EQ(decode_jpeg(encode_jpeg(view), "view").shape(), (Shape{48, 32, 3}));
}

TEST(Jpeg, OddSizesAndTinyImages) {
  for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 17}, {33, 1}, {15, 31}}) {
    const Tensor image = Tensor::empty({h, w, 3}, DType::U8).fill_(77);
    const Tensor back = decode_jpeg(encode_jpeg(image), "tiny");
    ASSERT_EQ(back.shape(), image.shape());
    EXPECT_LE(difference(image, back).second, 2) << h << "x" << w;
  }
}

// A JPEG that the ffmpeg CLI wrote (its own mjpeg encoder, 4:4:4) decodes to what the CLI's
// decoder gives, up to the IDCT and upsampling differences of two JPEG decoders.
TEST(Jpeg, DecodesAnotherEncodersJpegLikeFfmpeg) {
  if (std::system("ffmpeg -version >/dev/null 2>&1") != 0) GTEST_SKIP() << "the ffmpeg command line is not installed";
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("bvllm_jpeg_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string jpg = (dir / "cli.jpg").string(), rgb = (dir / "cli.rgb").string();
  ASSERT_EQ(std::system(("ffmpeg -v error -y -f lavfi -i testsrc2=s=96x72 -frames:v 1 -q:v 2 -pix_fmt yuvj444p " + jpg +
                         " && ffmpeg -v error -y -i " + jpg + " -pix_fmt rgb24 -f rawvideo " + rgb)
                            .c_str()),
            0);
  std::ifstream jf(jpg, std::ios::binary), rf(rgb, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(jf)), {});
  const std::string pixels((std::istreambuf_iterator<char>(rf)), {});
  std::filesystem::remove_all(dir);
  const Tensor ours = decode_jpeg(bytes, jpg);
  ASSERT_EQ(ours.shape(), (Shape{72, 96, 3}));
  ASSERT_EQ(pixels.size(), ours.nbytes());
  Tensor theirs = Tensor::empty({72, 96, 3}, DType::U8);
  std::copy(pixels.begin(), pixels.end(), reinterpret_cast<char*>(theirs.data<uint8_t>()));
  const auto [mean, max] = difference(ours, theirs);
  EXPECT_LT(mean, 1.0);
  EXPECT_LE(max, 12);
}

TEST(Jpeg, DamagedDataIsRefusedNamingIt) {
  const std::string jpeg = encode_jpeg(test_image(64, 64));
  EXPECT_CONTAINS(error_of([&] { decode_jpeg("", "sample 7 frame 2"); }), "sample 7 frame 2: the JPEG data is empty");
  EXPECT_CONTAINS(error_of([&] { decode_jpeg("not a jpeg at all", "sample 7 frame 2"); }),
                  "sample 7 frame 2: not a readable JPEG");
  // Cut in the middle of the entropy-coded data: libjpeg only warns ("premature end"), which is
  // not good enough for a stored frame.
  const std::string cut = jpeg.substr(0, jpeg.size() / 2);
  EXPECT_CONTAINS(error_of([&] { decode_jpeg(cut, "cut.jpg"); }), "cut.jpg: the JPEG (64x64");
}

TEST(Jpeg, BadInputsToEncode) {
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor::empty({4, 4, 3}, DType::F32)); }), "expected u8");
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor::empty({4, 4, 4}, DType::U8)); }), "expected [H, W, 3]");
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor::empty({0, 4, 3}, DType::U8)); }), "empty");
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor::empty({4, 4, 3}, DType::U8), 0); }), "quality 0 is not in 1..100");
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor::empty({4, 4, 3}, DType::U8), 101); }), "quality 101");
  EXPECT_CONTAINS(error_of([] { encode_jpeg(Tensor()); }), "undefined");
}

TEST(Jpeg, ThreadsGetTheSameBytes) {
  const Tensor image = test_image(80, 100);
  const std::string expected = encode_jpeg(image);
  const Tensor expected_pixels = decode_jpeg(expected, "main");
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool same = true;
      for (int i = 0; i < 20; ++i) {
        const std::string bytes = encode_jpeg(image);
        same = same && bytes == expected && difference(decode_jpeg(bytes, "thread"), expected_pixels).second == 0;
      }
      ok[t] = same ? 1 : 0;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(ok[t], 1) << "thread " << t;
}

}  // namespace
}  // namespace bvllm::data
