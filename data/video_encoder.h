// Video encoding with FFmpeg's libraries (libavcodec, libavformat, libswscale): RGB frames drawn by
// our code into a file that data/video_decoder.h and any player read back. bvllm_synth writes its
// synthetic videos with it (data/synthetic.h).
//
// The frames are converted to yuv420p with libswscale's BT.601 limited-range matrix, and the stream
// is tagged so (colour space, primaries and transfer SMPTE 170M, limited range), which is also what
// decoders assume for untagged video, so decode_video gives the same colours back up to the codec's
// loss. The codec is H.264 through libx264 when this FFmpeg has it, else FFmpeg's own MPEG-4
// part 2 encoder ("mpeg4"). Timestamps are frame / fps exactly (time base 1 / fps).
//
// Output is deterministic: one encoder thread, FFmpeg's bitexact flags (no library version in the
// container), so the same frames give byte-identical files with the same FFmpeg build. Callers that
// want speed encode several videos at once (bvllm_synth runs one encoder per worker thread).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "runtime/tensor.h"

namespace bvllm::data {

struct VideoEncodeOptions {
  int64_t width = 0;   // even, > 0 (yuv420p halves the chroma)
  int64_t height = 0;  // even, > 0
  int fps = 8;         // frames per second, > 0
  // An FFmpeg encoder name ("libx264", "mpeg4", ...); empty picks default_video_codec().
  std::string codec{};
  // Quality: libx264's constant rate factor (0 lossless .. 51); other encoders use a fixed
  // quantizer derived from it (mpeg4: qscale max(2, crf / 6)).
  int crf = 18;
  int gop = 0;  // frames between keyframes; 0 = fps (one per second, so 1-fps decoding can seek)
};

// "libx264" when this FFmpeg has that encoder, else "mpeg4".
std::string default_video_codec();

// Writes one video file; the container follows the path's extension (.mp4, .mkv, .avi, ...).
// Construction opens the file and the encoder; add_frame encodes; finish() flushes the encoder and
// writes the container's index. A VideoEncoder destroyed without finish() (an exception on the
// way) deletes its partial file. Errors (cannot create the file, unknown encoder, bad options,
// wrong frame size) throw bvllm::Error naming the path and the FFmpeg call or option.
class VideoEncoder {
 public:
  VideoEncoder(const std::string& path, const VideoEncodeOptions& options);
  ~VideoEncoder();
  VideoEncoder(const VideoEncoder&) = delete;
  VideoEncoder& operator=(const VideoEncoder&) = delete;

  // One frame: packed RGB, height * width * 3 bytes, rows top to bottom.
  void add_frame(std::span<const uint8_t> rgb);
  // The same from a u8 [height, width, 3] CPU tensor (any strides).
  void add_frame(const Tensor& rgb);
  void finish();

  const std::string& codec() const;  // the encoder used
  int64_t frames() const;            // frames added so far

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bvllm::data
