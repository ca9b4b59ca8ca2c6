// JPEG encode and decode of stored frames with libjpeg-turbo's TurboJPEG API. Frames are kept as
// JPEG in the shards: quality 90 with 4:2:0 chroma is 8-24x smaller than raw RGB at 336-384 px and
// decodes in ~0.3-0.9 ms per frame on one core (../shared/research/data-pipeline.md §2.4).
//
// Each thread keeps one compressor and one decompressor handle (created on first use, destroyed
// with the thread), so both functions are thread-safe and allocate no handle per call.
#pragma once

#include <string>
#include <string_view>

#include "runtime/tensor.h"

namespace bvllm::data {

// The JPEG bytes of an RGB image: u8 [H, W, 3] on the CPU (any strides), 4:2:0 chroma subsampling,
// `quality` 1..100 (libjpeg's scale), TurboJPEG's default (fast) forward DCT. Throws bvllm::Error
// for another dtype or shape, an empty image, a quality out of range, or a TurboJPEG failure.
std::string encode_jpeg(const Tensor& rgb_u8_hwc, int quality = 90);

// Decodes JPEG bytes to u8 [H, W, 3] RGB (a grayscale or CMYK JPEG is converted to RGB), with
// libjpeg's accurate inverse DCT. Throws bvllm::Error naming `what` (a sample id and frame, a
// file) for data that is not a JPEG or is damaged: TurboJPEG's warnings (a truncated file, a
// corrupt segment) count as errors, because a stored frame must decode cleanly.
Tensor decode_jpeg(std::string_view bytes, const std::string& what);

}  // namespace bvllm::data
