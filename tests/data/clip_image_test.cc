// B-VLLM's pixel pre-processing against the reference that tests/reference/
// make_clip_image_fixtures.py computed with Pillow (Image.resize BICUBIC) and numpy exactly as
// transformers' CLIPImageProcessor and LLaVA's expand2square do: every intermediate u8 image and
// the f32 pixel_values bit for bit, on landscape, portrait, square, up- and down-scaled, odd and
// tiny images, crops smaller and larger than the resize, the pad mode, other mean/std, and one
// full-size 480x640 -> 336x336 frame. Then the steps alone on hand-checked inputs, and the errors.
#include "data/clip_image.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "runtime/error.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"

namespace bvllm {
namespace {

using testing::error_of;

const testing::Fixture& fixture() {
  static const testing::Fixture f("clip_image");
  return f;
}

// Bitwise equality of two tensors (same dtype and shape), naming the first difference.
::testing::AssertionResult same_bits(const Tensor& actual, const Tensor& expected) {
  if (actual.dtype() != expected.dtype() || actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "got " << dtype_name(actual.dtype()) << shape_str(actual.shape())
                                         << ", expected " << dtype_name(expected.dtype())
                                         << shape_str(expected.shape());
  const Tensor a = actual.contiguous(), e = expected.contiguous();
  const auto* pa = static_cast<const uint8_t*>(a.raw_data());
  const auto* pe = static_cast<const uint8_t*>(e.raw_data());
  if (std::memcmp(pa, pe, a.nbytes()) == 0) return ::testing::AssertionSuccess();
  const std::vector<double> va = a.to_vector<double>(), ve = e.to_vector<double>();
  size_t first = 0, count = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::memcmp(pa + i * dtype_size(a.dtype()), pe + i * dtype_size(a.dtype()), dtype_size(a.dtype())) != 0) {
      if (count++ == 0) first = i;
    }
  }
  return ::testing::AssertionFailure() << count << " of " << va.size() << " elements differ; first at flat index "
                                       << first << ": " << va[first] << " vs " << ve[first];
}

ClipImageOptions options_of(const std::string& name) {
  const std::vector<int64_t> o = fixture()[name + ".options"].to_vector<int64_t>();
  const std::vector<double> ms = fixture()[name + ".mean_std"].to_vector<double>();
  ClipImageOptions options;
  options.size = static_cast<int>(o[0]);
  options.crop = static_cast<int>(o[1]);
  options.mode = o[2] != 0 ? ClipImageOptions::Mode::Pad : ClipImageOptions::Mode::Square;
  for (int c = 0; c < 3; ++c) {
    options.mean[c] = ms[c];
    options.std[c] = ms[3 + c];
  }
  return options;
}

const std::vector<std::string> kCases = {
    "landscape",
    "portrait",
    "already_size",
    "upscale",
    "upscale_square",
    "tall_thin",
    "one_row",
    "odd",
    "short_side_is_size_wide",
    "short_side_is_size_tall",
    "downscale_4x",
    "crop_smaller",
    "crop_larger_pads_zeros",
    "pad_landscape",
    "pad_portrait",
    "pad_odd_difference",
    "pad_square",
    "other_mean_std",
};

TEST(ClipImage, EveryStepMatchesPillowAndNumpy) {
  for (const std::string& name : kCases) {
    SCOPED_TRACE(name);
    const ClipImageOptions options = options_of(name);
    Tensor image = fixture()[name + ".image"];
    if (options.mode == ClipImageOptions::Mode::Pad) {
      image = expand_to_square(image, clip_pad_colour(options));
      EXPECT_TRUE(same_bits(image, fixture()[name + ".padded"]));
    }
    const auto [out_h, out_w] = clip_resize_size(image.size(0), image.size(1), options.size);
    const Tensor resized = resize_bicubic_pil(image, out_h, out_w);
    EXPECT_TRUE(same_bits(resized, fixture()[name + ".resized"]));
    const Tensor pixels = clip_normalize(center_crop(resized, options.crop), options);
    EXPECT_TRUE(same_bits(pixels, fixture()[name + ".pixel_values"]));
    // The one-call pipeline gives the same.
    EXPECT_TRUE(same_bits(clip_preprocess(fixture()[name + ".image"], options), fixture()[name + ".pixel_values"]));
  }
}

// The 480x640 frame of make_clip_image_fixtures.py's frame336_pattern().
Tensor frame336_pattern() {
  const int64_t h = 480, w = 640;
  Tensor image = Tensor::empty({h, w, 3}, DType::U8);
  uint8_t* p = image.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        const int64_t v = x * 3 + y * 5 + c * 80 + ((x * y * 7 + c * 13) % 97) * 2 + ((x / 8 + y / 8) % 2) * 64;
        p[(y * w + x) * 3 + c] = static_cast<uint8_t>(v % 256);
      }
  return image;
}

uint64_t fnv1a64(const Tensor& t) {
  uint64_t h = 0xCBF29CE484222325ull;
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  return h;
}

TEST(ClipImage, FullSizeFrameMatchesPillow) {
  const Tensor frame = frame336_pattern();
  const ClipImageOptions options;  // CLIP-336, no pad
  EXPECT_EQ(clip_resize_size(480, 640, 336), (std::pair<int64_t, int64_t>{336, 448}));
  const Tensor cropped = center_crop(resize_bicubic_pil(frame, 336, 448), 336);
  EXPECT_TRUE(same_bits(cropped.slice(0, 0, 336, 8).contiguous(), fixture()["frame336.cropped_every8"]));
  // Read the raw i64 (item() goes through double, which would round the hash).
  EXPECT_EQ(static_cast<int64_t>(fnv1a64(cropped)), *fixture()["frame336.cropped_fnv1a"].data<int64_t>());
  const Tensor pixels = clip_preprocess(frame, options);
  ASSERT_EQ(pixels.shape(), (Shape{3, 336, 336}));
  EXPECT_TRUE(same_bits(pixels.slice(1, 0, 336, 16).slice(2, 0, 336, 16).contiguous(),
                        fixture()["frame336.pixel_values_every16"]));
}

TEST(ClipImage, BatchStacksImagesOfAnyShape) {
  ClipImageOptions options = options_of("landscape");
  const std::vector<Tensor> images = {fixture()["landscape.image"], fixture()["portrait.image"],
                                      fixture()["upscale.image"]};
  const Tensor batch = clip_preprocess_batch(images, options);
  ASSERT_EQ(batch.shape(), (Shape{3, 3, 24, 24}));
  EXPECT_EQ(batch.dtype(), DType::F32);
  EXPECT_TRUE(same_bits(batch.select(0, 0), fixture()["landscape.pixel_values"]));
  EXPECT_TRUE(same_bits(batch.select(0, 1), fixture()["portrait.pixel_values"]));
  EXPECT_TRUE(same_bits(batch.select(0, 2), fixture()["upscale.pixel_values"]));
  EXPECT_CONTAINS(error_of([&] { clip_preprocess_batch(std::vector<Tensor>{}, options); }), "no images");
}

TEST(ClipImage, DefaultsAreClip336) {
  const ClipImageOptions options;
  EXPECT_EQ(options.size, 336);
  EXPECT_EQ(options.crop, 336);
  EXPECT_EQ(options.mode, ClipImageOptions::Mode::Square);
  // LLaVA's fill colour: tuple(int(x * 255) for x in image_mean).
  EXPECT_EQ(clip_pad_colour(options), (std::array<uint8_t, 3>{122, 116, 104}));
}

// --- the steps alone on inputs small enough to check by hand -------------------------------------

Tensor image_of(std::initializer_list<uint8_t> values, int64_t h, int64_t w) {
  return Tensor::from<uint8_t>(values, Shape{h, w, 3});
}

TEST(ClipImageSteps, ResizeOutputSizeFollowsTransformers) {
  EXPECT_EQ(clip_resize_size(480, 640, 336), (std::pair<int64_t, int64_t>{336, 448}));
  EXPECT_EQ(clip_resize_size(640, 480, 336), (std::pair<int64_t, int64_t>{448, 336}));
  EXPECT_EQ(clip_resize_size(720, 1280, 336), (std::pair<int64_t, int64_t>{336, 597}));  // 597.33 -> 597
  EXPECT_EQ(clip_resize_size(500, 500, 336), (std::pair<int64_t, int64_t>{336, 336}));
  EXPECT_EQ(clip_resize_size(3, 7, 2), (std::pair<int64_t, int64_t>{2, 4}));  // 4.67 -> 4
  EXPECT_EQ(clip_resize_size(1, 1, 336), (std::pair<int64_t, int64_t>{336, 336}));
}

TEST(ClipImageSteps, ConstantImagesStayConstant) {
  // The weights of each output pixel sum to 1 (in fixed point, within rounding): a flat colour
  // survives any resize exactly.
  Tensor flat = Tensor::empty({7, 11, 3}, DType::U8);
  for (int64_t i = 0; i < 7 * 11; ++i) {
    flat.data<uint8_t>()[i * 3 + 0] = 200;
    flat.data<uint8_t>()[i * 3 + 1] = 0;
    flat.data<uint8_t>()[i * 3 + 2] = 255;
  }
  for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{3, 5}, {20, 31}, {7, 40}, {1, 1}}) {
    const Tensor out = resize_bicubic_pil(flat, h, w);
    ASSERT_EQ(out.shape(), (Shape{h, w, 3}));
    const std::vector<uint8_t> v = out.to_vector<uint8_t>();
    for (size_t i = 0; i < v.size(); i += 3) {
      ASSERT_EQ(v[i], 200);
      ASSERT_EQ(v[i + 1], 0);
      ASSERT_EQ(v[i + 2], 255);
    }
  }
  // Same size: an unchanged copy.
  const Tensor same = resize_bicubic_pil(flat, 7, 11);
  EXPECT_FALSE(same.shares_storage(flat));
  EXPECT_TRUE(same_bits(same, flat));
}

TEST(ClipImageSteps, ExpandToSquareCentresWithTheFill) {
  // 1x3 (h=1, w=3): a 3x3 square, the row pasted at y = (3 - 1) // 2 = 1.
  const Tensor wide = image_of({1, 2, 3, 4, 5, 6, 7, 8, 9}, 1, 3);
  const std::vector<uint8_t> expected = {9, 8, 7, 9, 8, 7, 9, 8, 7,  //
                                         1, 2, 3, 4, 5, 6, 7, 8, 9,  //
                                         9, 8, 7, 9, 8, 7, 9, 8, 7};
  const Tensor square = expand_to_square(wide, {9, 8, 7});
  EXPECT_EQ(square.shape(), (Shape{3, 3, 3}));
  EXPECT_EQ(square.to_vector<uint8_t>(), expected);
  // 2x1 (h=2, w=1): a 2x2 square, the column pasted at x = (2 - 1) // 2 = 0.
  const Tensor tall = image_of({1, 2, 3, 4, 5, 6}, 2, 1);
  EXPECT_EQ(expand_to_square(tall, {0, 0, 0}).to_vector<uint8_t>(),
            (std::vector<uint8_t>{1, 2, 3, 0, 0, 0, 4, 5, 6, 0, 0, 0}));
}

TEST(ClipImageSteps, CenterCropIndexesAsTransformers) {
  // 1x4 row of pixels 10, 20, 30, 40 (same value on the 3 channels).
  const Tensor row = image_of({10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40}, 1, 4);
  // Crop 3 of width 4: left = (4 - 3) // 2 = 0; of height 1: padded, the row at ceil(2 / 2) = 1.
  const Tensor out = center_crop(row, 3);
  ASSERT_EQ(out.shape(), (Shape{3, 3, 3}));
  EXPECT_EQ(out.to_vector<uint8_t>(), (std::vector<uint8_t>{0,  0,  0,  0,  0,  0,  0,  0,  0,   //
                                                            10, 10, 10, 20, 20, 20, 30, 30, 30,  //
                                                            0,  0,  0,  0,  0,  0,  0,  0,  0}));
  // Crop 2 of width 4: left = 1.
  EXPECT_EQ(center_crop(row, 2).to_vector<uint8_t>(), (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 20, 20, 20, 30, 30, 30}));
}

TEST(ClipImageSteps, NormalizeUsesFloat32AsTransformers) {
  ClipImageOptions options;
  options.mean = {0.5, 0.5, 0.5};
  options.std = {0.5, 0.5, 0.5};
  const Tensor out = clip_normalize(image_of({0, 255, 51}, 1, 1), options);
  ASSERT_EQ(out.shape(), (Shape{3, 1, 1}));
  const std::vector<float> v = out.to_vector<float>();
  EXPECT_EQ(v[0], -1.0f);
  EXPECT_EQ(v[1], 1.0f);
  EXPECT_EQ(v[2], (static_cast<float>(51.0 / 255.0) - 0.5f) / 0.5f);  // CHW: one pixel, three planes
}

TEST(ClipImageSteps, NonContiguousInputsAreAccepted) {
  const Tensor image = fixture()["landscape.image"];
  // The same pixels through a transposed (non-contiguous) view of a transposed copy.
  const Tensor copy = image.transpose(0, 1).contiguous().transpose(0, 1);
  ASSERT_FALSE(copy.is_contiguous());
  EXPECT_TRUE(same_bits(clip_preprocess(copy, options_of("landscape")), fixture()["landscape.pixel_values"]));
}

TEST(ClipImageErrors, NameTheProblem) {
  const ClipImageOptions options;
  EXPECT_CONTAINS(error_of([&] {
                    clip_preprocess(Tensor::empty({4, 4, 3}, DType::F32), options);
                  }),
                  "clip_preprocess: the image is f32, expected u8");
  EXPECT_CONTAINS(error_of([&] {
                    clip_preprocess(Tensor::empty({3, 4, 4}, DType::U8), options);
                  }),
                  "the image has shape [3, 4, 4], expected [H, W, 3]");
  EXPECT_CONTAINS(error_of([&] { clip_preprocess(Tensor::empty({4, 4}, DType::U8), options); }), "expected [H, W, 3]");
  EXPECT_CONTAINS(error_of([&] {
                    clip_preprocess(Tensor::empty({0, 4, 3}, DType::U8), options);
                  }),
                  "the image is empty");
  EXPECT_CONTAINS(error_of([&] { clip_preprocess(Tensor(), options); }), "undefined tensor");
  ClipImageOptions bad;
  bad.size = 0;
  EXPECT_CONTAINS(error_of([&] { clip_preprocess(Tensor::empty({4, 4, 3}, DType::U8), bad); }), "size 0");
  bad = {};
  bad.std[1] = 0.0;
  EXPECT_CONTAINS(error_of([&] { clip_preprocess(Tensor::empty({4, 4, 3}, DType::U8), bad); }), "std[1] is 0");
  EXPECT_CONTAINS(error_of([&] {
                    resize_bicubic_pil(Tensor::empty({4, 4, 3}, DType::U8), 0, 3);
                  }),
                  "output size 0x3 must be positive");
}

}  // namespace
}  // namespace bvllm
