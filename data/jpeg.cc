#include "data/jpeg.h"

#include <turbojpeg.h>

#include <memory>

#include "runtime/error.h"

namespace bvllm::data {

namespace {

struct TjDestroy {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TjHandle = std::unique_ptr<void, TjDestroy>;

// One handle of each kind per thread: a handle is not safe to share between threads, and making
// one per call would allocate libjpeg's state for every frame.
tjhandle compressor() {
  thread_local TjHandle handle(tjInitCompress());
  BVLLM_REQUIRE(handle != nullptr, "encode_jpeg: tjInitCompress failed: ", tjGetErrorStr2(nullptr));
  return handle.get();
}

tjhandle decompressor() {
  thread_local TjHandle handle(tjInitDecompress());
  BVLLM_REQUIRE(handle != nullptr, "decode_jpeg: tjInitDecompress failed: ", tjGetErrorStr2(nullptr));
  return handle.get();
}

// TurboJPEG allocates the output with tjAlloc; it is freed with tjFree.
struct TjFree {
  void operator()(unsigned char* buffer) const { tjFree(buffer); }
};

}  // namespace

std::string encode_jpeg(const Tensor& rgb_u8_hwc, int quality) {
  const Tensor& image = rgb_u8_hwc;
  BVLLM_REQUIRE(image.defined(), "encode_jpeg: the image is an undefined tensor");
  BVLLM_REQUIRE(image.device().is_cpu(), "encode_jpeg: the image is on ", image.device().str(), ", expected the CPU");
  BVLLM_REQUIRE(image.dtype() == DType::U8, "encode_jpeg: the image is ", dtype_name(image.dtype()),
                ", expected u8 (RGB bytes)");
  BVLLM_REQUIRE(image.dim() == 3 && image.size(2) == 3, "encode_jpeg: the image has shape ", shape_str(image.shape()),
                ", expected [H, W, 3] (HWC, RGB)");
  BVLLM_REQUIRE(image.size(0) > 0 && image.size(1) > 0, "encode_jpeg: the image is empty (", shape_str(image.shape()),
                ")");
  // JPEG stores each dimension in 16 bits.
  BVLLM_REQUIRE(image.size(0) <= 65535 && image.size(1) <= 65535, "encode_jpeg: the image is ",
                shape_str(image.shape()), ", larger than JPEG's 65535 x 65535");
  BVLLM_REQUIRE(quality >= 1 && quality <= 100, "encode_jpeg: quality ", quality, " is not in 1..100");
  const Tensor pixels = image.contiguous();
  const int height = static_cast<int>(pixels.size(0)), width = static_cast<int>(pixels.size(1));

  tjhandle handle = compressor();
  unsigned char* out = nullptr;
  unsigned long size = 0;  // TurboJPEG's type
  const int rc = tjCompress2(handle, pixels.data<uint8_t>(), width, /*pitch=*/width * 3, height, TJPF_RGB, &out, &size,
                             TJSAMP_420, quality, /*flags=*/0);
  const std::unique_ptr<unsigned char, TjFree> owned(out);
  BVLLM_REQUIRE(rc == 0, "encode_jpeg: TurboJPEG failed on a ", height, "x", width, " image: ", tjGetErrorStr2(handle));
  return std::string(reinterpret_cast<const char*>(out), size);
}

Tensor decode_jpeg(std::string_view bytes, const std::string& what) {
  BVLLM_REQUIRE(!bytes.empty(), what, ": the JPEG data is empty");
  tjhandle handle = decompressor();
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  BVLLM_REQUIRE(tjDecompressHeader3(handle, data, size, &width, &height, &subsampling, &colorspace) == 0, what,
                ": not a readable JPEG (", bytes.size(), " bytes): ", tjGetErrorStr2(handle));
  BVLLM_REQUIRE(width > 0 && height > 0, what, ": the JPEG is ", width, "x", height);
  Tensor out = Tensor::empty({height, width, 3}, DType::U8);
  // TJFLAG_STOPONWARNING: a truncated or corrupt stream, which libjpeg would finish with grey or
  // repeated blocks and a mere warning, is refused.
  const int rc = tjDecompress2(handle, data, size, out.data<uint8_t>(), width, /*pitch=*/width * 3, height, TJPF_RGB,
                               TJFLAG_STOPONWARNING);
  BVLLM_REQUIRE(rc == 0, what, ": the JPEG (", width, "x", height, ", ", bytes.size(),
                " bytes) does not decode cleanly: ", tjGetErrorStr2(handle));
  return out;
}

}  // namespace bvllm::data
