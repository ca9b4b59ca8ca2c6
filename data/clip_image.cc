#include "data/clip_image.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/error.h"

namespace bvllm {

namespace {

// An image argument: a non-empty u8 [H, W, 3] CPU tensor, made contiguous.
Tensor checked_image(const Tensor& image, const char* what) {
  BVLLM_REQUIRE(image.defined(), what, ": the image is an undefined tensor");
  BVLLM_REQUIRE(image.device().is_cpu(), what, ": the image is on ", image.device().str(), ", expected the CPU");
  BVLLM_REQUIRE(image.dtype() == DType::U8, what, ": the image is ", dtype_name(image.dtype()),
                ", expected u8 (RGB bytes)");
  BVLLM_REQUIRE(image.dim() == 3 && image.size(2) == 3, what, ": the image has shape ", shape_str(image.shape()),
                ", expected [H, W, 3] (HWC, RGB)");
  BVLLM_REQUIRE(image.size(0) > 0 && image.size(1) > 0, what, ": the image is empty (", shape_str(image.shape()), ")");
  return image.contiguous();
}

void check_options(const ClipImageOptions& options) {
  BVLLM_REQUIRE(options.size >= 1, "ClipImageOptions: size ", options.size, " (the short side) must be >= 1");
  BVLLM_REQUIRE(options.crop >= 1, "ClipImageOptions: crop ", options.crop, " must be >= 1");
  for (int c = 0; c < 3; ++c) BVLLM_REQUIRE(options.std[c] != 0.0, "ClipImageOptions: std[", c, "] is 0");
}

// --- Pillow's resampling (src/libImaging/Resample.c) ---------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // PRECISION_BITS: 22 fractional bits

// The Keys cubic with a = -0.5 (Pillow's bicubic_filter), support 2.
double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc for one axis: output pixel i reads inputs
// [first[i], first[i] + count[i]) with the weights weights[i * ksize ...]. When down-scaling by s
// the filter is stretched by s (an antialiasing low-pass); the weights of each output pixel are
// normalized to sum 1 in double, then rounded half away from zero to 22-bit fixed point.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Taps precompute_taps(int64_t in_size, int64_t out_size) {
  // Pillow passes the box (0, 0, in_w, in_h) as floats; in1 - in0 is exact for these sizes.
  const double in0 = 0.0, in1 = static_cast<double>(static_cast<float>(in_size));
  const double scale = (in1 - in0) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.ksize, 0);
  std::vector<double> w(taps.ksize);
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = in0 + (static_cast<double>(i) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // C's (int) truncates toward zero, as static_cast does.
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), static_cast<int>(in_size)) - xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double k = ww != 0.0 ? w[x] / ww : w[x];
      const double fixed = k * (1 << kPrecisionBits);
      taps.weights[i * taps.ksize + x] = static_cast<int32_t>(k < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    taps.first[i] = xmin;
    taps.count[i] = xmax;
  }
  return taps;
}

// clip8: the accumulator (which starts at 0.5 in fixed point) floored to 8 bits, clamped.
uint8_t clip8(int32_t acc) { return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255)); }

}  // namespace

// --- the steps -----------------------------------------------------------------------------------

std::array<uint8_t, 3> clip_pad_colour(const ClipImageOptions& options) {
  std::array<uint8_t, 3> colour{};
  for (int c = 0; c < 3; ++c) {
    const double v = options.mean[c] * 255;  // Python: int(m * 255), truncation toward zero
    BVLLM_REQUIRE(v >= 0.0 && v < 256.0, "ClipImageOptions: mean[", c, "] = ", options.mean[c],
                  " gives no pad colour in 0..255");
    colour[c] = static_cast<uint8_t>(v);
  }
  return colour;
}

Tensor expand_to_square(const Tensor& image_in, std::array<uint8_t, 3> fill) {
  const Tensor image = checked_image(image_in, "expand_to_square");
  const int64_t h = image.size(0), w = image.size(1);
  if (h == w) return image;
  const int64_t side = std::max(h, w), top = (side - h) / 2, left = (side - w) / 2;
  Tensor out = Tensor::empty({side, side, 3}, DType::U8);
  uint8_t* dst = out.data<uint8_t>();
  for (int64_t p = 0; p < side * side; ++p) std::copy(fill.begin(), fill.end(), dst + p * 3);
  const uint8_t* src = image.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y) std::copy_n(src + y * w * 3, w * 3, dst + ((top + y) * side + left) * 3);
  return out;
}

std::pair<int64_t, int64_t> clip_resize_size(int64_t height, int64_t width, int size) {
  BVLLM_REQUIRE(height > 0 && width > 0 && size > 0, "clip_resize_size: image ", height, "x", width, ", size ", size,
                " (all must be positive)");
  const int64_t short_side = std::min(height, width), long_side = std::max(height, width);
  // int(size * long / short): an exact integer product, a correctly rounded true division, then
  // truncation, all as Python does them.
  const auto new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
  return width <= height ? std::pair{new_long, int64_t{size}} : std::pair{int64_t{size}, new_long};
}

Tensor resize_bicubic_pil(const Tensor& image_in, int64_t out_h, int64_t out_w) {
  const Tensor image = checked_image(image_in, "resize_bicubic_pil");
  BVLLM_REQUIRE(out_h > 0 && out_w > 0, "resize_bicubic_pil: output size ", out_h, "x", out_w, " must be positive");
  const int64_t in_h = image.size(0), in_w = image.size(1);
  // Image.resize returns a copy when nothing changes; an axis of unchanged size is not resampled.
  if (in_h == out_h && in_w == out_w) return image.clone();

  Tensor current = image;
  if (out_w != in_w) {  // horizontal pass, into u8
    const Taps taps = precompute_taps(in_w, out_w);
    Tensor next = Tensor::empty({in_h, out_w, 3}, DType::U8);
    const uint8_t* src = current.data<uint8_t>();
    uint8_t* dst = next.data<uint8_t>();
    for (int64_t y = 0; y < in_h; ++y) {
      const uint8_t* row = src + y * in_w * 3;
      for (int64_t x = 0; x < out_w; ++x) {
        const int32_t* k = &taps.weights[x * taps.ksize];
        const uint8_t* px = row + static_cast<int64_t>(taps.first[x]) * 3;
        int32_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
        for (int t = 0; t < taps.count[x]; ++t)
          for (int c = 0; c < 3; ++c) acc[c] += px[t * 3 + c] * k[t];
        for (int c = 0; c < 3; ++c) dst[(y * out_w + x) * 3 + c] = clip8(acc[c]);
      }
    }
    current = next;
  }
  if (out_h != in_h) {  // vertical pass, on the horizontally resampled image
    const Taps taps = precompute_taps(in_h, out_h);
    Tensor next = Tensor::empty({out_h, out_w, 3}, DType::U8);
    const uint8_t* src = current.data<uint8_t>();
    uint8_t* dst = next.data<uint8_t>();
    const int64_t row_bytes = out_w * 3;
    std::vector<int32_t> acc(row_bytes);
    for (int64_t y = 0; y < out_h; ++y) {
      const int32_t* k = &taps.weights[y * taps.ksize];
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      for (int t = 0; t < taps.count[y]; ++t) {
        const uint8_t* row = src + (taps.first[y] + t) * row_bytes;
        for (int64_t i = 0; i < row_bytes; ++i) acc[i] += row[i] * k[t];
      }
      for (int64_t i = 0; i < row_bytes; ++i) dst[y * row_bytes + i] = clip8(acc[i]);
    }
    current = next;
  }
  return current;
}

Tensor center_crop(const Tensor& image_in, int64_t crop) {
  const Tensor image = checked_image(image_in, "center_crop");
  BVLLM_REQUIRE(crop > 0, "center_crop: crop ", crop, " must be positive");
  const int64_t h = image.size(0), w = image.size(1);
  // Per axis, the source index of output index 0: (n - crop) // 2 when the image is large
  // enough; otherwise transformers pads it into a crop-sized canvas at ceil((crop - n) / 2).
  const auto origin = [&](int64_t n) { return n >= crop ? (n - crop) / 2 : -((crop - n + 1) / 2); };
  const int64_t top = origin(h), left = origin(w);
  Tensor out = Tensor::empty({crop, crop, 3}, DType::U8);
  uint8_t* dst = out.data<uint8_t>();
  const uint8_t* src = image.data<uint8_t>();
  std::fill(dst, dst + crop * crop * 3, uint8_t{0});
  for (int64_t y = 0; y < crop; ++y) {
    const int64_t sy = top + y;
    if (sy < 0 || sy >= h) continue;
    const int64_t x0 = std::max<int64_t>(0, -left), x1 = std::min(crop, w - left);
    if (x1 > x0) std::copy_n(src + (sy * w + left + x0) * 3, (x1 - x0) * 3, dst + (y * crop + x0) * 3);
  }
  return out;
}

Tensor clip_normalize(const Tensor& image_in, const ClipImageOptions& options) {
  const Tensor image = checked_image(image_in, "clip_normalize");
  check_options(options);
  const int64_t h = image.size(0), w = image.size(1);
  // transformers: rescale = (x.astype(float64) * (1/255)).astype(float32); normalize casts mean
  // and std to float32 and computes (x - mean) / std in float32.
  const double scale = 1.0 / 255.0;
  std::array<float, 256> rescaled{};
  for (int v = 0; v < 256; ++v) rescaled[v] = static_cast<float>(v * scale);
  Tensor out = Tensor::empty({3, h, w}, DType::F32);
  float* dst = out.data<float>();
  const uint8_t* src = image.data<uint8_t>();
  for (int c = 0; c < 3; ++c) {
    const auto mean = static_cast<float>(options.mean[c]), std = static_cast<float>(options.std[c]);
    std::array<float, 256> lut{};
    for (int v = 0; v < 256; ++v) lut[v] = (rescaled[v] - mean) / std;
    for (int64_t p = 0; p < h * w; ++p) dst[c * h * w + p] = lut[src[p * 3 + c]];
  }
  return out;
}

// --- the pipeline --------------------------------------------------------------------------------

Tensor clip_preprocess(const Tensor& image_in, const ClipImageOptions& options) {
  check_options(options);
  Tensor image = checked_image(image_in, "clip_preprocess");
  if (options.mode == ClipImageOptions::Mode::Pad) image = expand_to_square(image, clip_pad_colour(options));
  const auto [out_h, out_w] = clip_resize_size(image.size(0), image.size(1), options.size);
  return clip_normalize(center_crop(resize_bicubic_pil(image, out_h, out_w), options.crop), options);
}

Tensor clip_preprocess_batch(std::span<const Tensor> images, const ClipImageOptions& options) {
  BVLLM_REQUIRE(!images.empty(), "clip_preprocess_batch: no images");
  const int64_t n = static_cast<int64_t>(images.size()), s = options.crop;
  Tensor out = Tensor::empty({n, 3, s, s}, DType::F32);
  float* dst = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const Tensor one = clip_preprocess(images[i], options);
    std::copy_n(one.data<float>(), 3 * s * s, dst + i * 3 * s * s);
  }
  return out;
}

}  // namespace bvllm
