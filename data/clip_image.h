// B-VLLM's pixel pre-processing: Hugging Face's CLIPImageProcessor of
// openai/clip-vit-large-patch14-336 (resize the short side to 336 with Pillow's BICUBIC, center
// crop 336x336, scale by 1/255, normalize with CLIP's mean and std), optionally after LLaVA's
// expand2square with the mean colour (image_aspect_ratio "pad", used for SFT images)
// (../shared/research/bvllm.md §2.1). Images are u8 [H, W, 3] (HWC, RGB) on the CPU; the result
// is f32 [3, crop, crop] (CHW), as pixel_values.
//
// Every step reproduces the reference bit for bit (tests/data/clip_image_test.cc checks it
// against Pillow and numpy): the resize is Pillow's 8-bit separable convolution (Resample.c:
// a = -0.5 cubic, support widened by the down-scale factor, coefficients normalized per output
// pixel then rounded to 22-bit fixed point, horizontal pass first into u8, then vertical), and the
// float steps use transformers' dtypes (x * (1/255) in double rounded to f32, then
// (x - mean) / std in f32).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <utility>

#include "runtime/tensor.h"

namespace bvllm {

struct ClipImageOptions {
  enum class Mode {
    Square,  // no padding: CLIPImageProcessor alone (the Hugging Face default; PT and inference)
    Pad,     // expand2square with the mean colour first (LLaVA's image_aspect_ratio "pad"; SFT)
  };
  int size = 336;  // the short side after resizing ({"shortest_edge": 336})
  int crop = 336;  // the side of the center crop ({"height": 336, "width": 336})
  // CLIP's image_mean / image_std, as the preprocessor_config.json writes them.
  std::array<double, 3> mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std = {0.26862954, 0.26130258, 0.27577711};
  Mode mode = Mode::Square;
};

// The whole pipeline: u8 [H, W, 3] -> f32 [3, crop, crop]. Throws bvllm::Error for an image that
// is not a non-empty u8 [H, W, 3] CPU tensor, or for options with size or crop < 1 or std 0.
Tensor clip_preprocess(const Tensor& image, const ClipImageOptions& options = {});
// Each image through clip_preprocess, stacked: f32 [N, 3, crop, crop] (N >= 1).
Tensor clip_preprocess_batch(std::span<const Tensor> images, const ClipImageOptions& options = {});

// --- the steps, in order -------------------------------------------------------------------------

// LLaVA's expand2square fill: tuple(int(m * 255) for m in mean), (122, 116, 104) for CLIP.
std::array<uint8_t, 3> clip_pad_colour(const ClipImageOptions& options);
// expand2square: a square of side max(H, W) filled with `fill`, the image pasted at
// ((side - W) // 2, (side - H) // 2); a square image comes back as it is.
Tensor expand_to_square(const Tensor& image, std::array<uint8_t, 3> fill);
// get_resize_output_image_size with default_to_square=False: {out_h, out_w} with the short side
// `size` and the long side int(size * long / short).
std::pair<int64_t, int64_t> clip_resize_size(int64_t height, int64_t width, int size);
// PIL.Image.resize((out_w, out_h), resample=BICUBIC) on an RGB image: u8 [out_h, out_w, 3].
Tensor resize_bicubic_pil(const Tensor& image, int64_t out_h, int64_t out_w);
// transformers' center_crop: top = (H - crop) // 2, left = (W - crop) // 2, with zeros where the
// image is smaller than the crop (placed as transformers places it). u8 [crop, crop, 3].
Tensor center_crop(const Tensor& image, int64_t crop);
// rescale(1/255) then normalize, HWC u8 -> CHW f32.
Tensor clip_normalize(const Tensor& image, const ClipImageOptions& options);

}  // namespace bvllm
