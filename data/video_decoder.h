// Video and image decoding with FFmpeg's libraries (libavformat, libavcodec, libswscale of
// FFmpeg 5.1): the 1-fps RGB frames that bvllm_prep stores. Facts and measurements behind every
// choice: ../shared/research/data-pipeline.md §1.
//
// Which frame is "the frame of second k" (§1.2): targets sit at the middle of each sampling
// period, t_k = (k + 0.5) / fps seconds from the stream start, and target k gets the frame that
// is on screen at t_k: the last frame whose timestamp is <= t_k. For a constant 30-fps file that
// is frame 30k + 15, the frame B-VLLM's own 1-fps inference sampler takes
// (arange(seg_len // 2, D, seg_len), ../shared/research/bvllm.md §2.1), and it is the ffmpeg
// CLI's `-vf fps=1` rule too (the last frame before k + 0.5 s). Targets run while t_k is before
// the end of the decoded video (last frame time + one frame); a video shorter than half a period
// still gives one frame (its last).
//
// Time comes from timestamps, never from frame indices (§1.3): best_effort_timestamp in the
// stream's time base, relative to the stream's start_time; a frame without one (raw .h264, the
// first frame of an MPEG-4 ASP AVI) or whose time does not advance gets the previous frame's time
// plus one frame (1 / av_guess_frame_rate). Where the video has a hole in time, every target in
// the hole gets the frame on screen during it (the last one before the hole): consecutive
// VideoFrames then share one timestamp and one rgb tensor. Time is not compressed, except that a
// jump of more than 60 s between two frames is taken for a timestamp discontinuity (an MPEG-TS
// clock reset, damaged timestamps) and the clock restarts one frame after the previous frame.
//
// The decode loop (§1.5): every packet of the video stream is demuxed and decoded (other streams,
// audio among them, are discarded by the demuxer with AVDISCARD_ALL), with two savings that change
// no pick: the decoder seeks ahead only when the container's index holds a keyframe after the
// current read position and before the next target (then the frames in between need no
// decoding), falling back to decoding forward when a seek lands after the target; and packets
// wait in a short lookahead so that a frame that cannot be on screen at any target (its successor
// in presentation order comes first) is decoded only if it is a reference for others
// (skip_frame = AVDISCARD_NONREF for that packet). The decoder is drained at the end of the file,
// so the frames held back by B-frame reordering and frame threads are not lost. Frames that the
// decoder flags as corrupt (concealed errors) are kept; a packet the decoder rejects is skipped.
//
// Pixels: the chosen frames only are converted to RGB24 by libswscale with the colour matrix the
// stream declares (BT.709, BT.601, BT.2020, SMPTE 240M, FCC; BT.601 when unspecified, as FFmpeg
// does) and its range (limited, or full for JPEG-range streams), then turned upright by the
// display matrix's rotation (multiples of 90 degrees, as the ffmpeg CLI applies it; mirroring is
// ignored), then resized so the short side is `short_side` with Pillow's bicubic
// (resize_bicubic_pil of data/clip_image.h, the resize the CLIP processor uses: a stored
// 336-short-side frame passes the loader's CLIP resize unchanged). The sample aspect ratio is
// not applied (neither FFmpeg's CLI nor the reference's decord do).
//
// Errors: every FFmpeg failure that stops a decode throws DecodeError naming the path, the call
// and FFmpeg's message. Invalid DecodeOptions throw bvllm::Error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace bvllm::data {

struct DecodeOptions {
  double fps = 1.0;  // frames per second to extract, chosen by timestamp (> 0)
  // Decoder threads; 0 = std::thread::hardware_concurrency(). Set explicitly because the library's
  // default is 1 (§1.1). Several prep workers decoding at once each want 1.
  int threads = 0;
  // Cap on the frames returned (bvlm's MAX_FRAMES). When a video has more targets, the targets are
  // subsampled uniformly: target i of the cap takes base target floor((i + 0.5) * n / max_frames)
  // of the n targets. n comes from the container's duration before decoding (so only the kept
  // targets are converted); if the decoded video turns out longer, the frames are subsampled the
  // same way afterwards.
  int64_t max_frames = 10200;
  // Resize so the shortest side is this (aspect kept, long side int(short_side * long / short) as
  // the CLIP processor computes it; up- or down-scaling); 0 keeps the decoded size.
  int64_t short_side = 336;
  // true decodes every frame. By default the decoder skips work no target needs: it seeks ahead
  // to a keyframe when the container's index shows one between the read position and the next
  // target, and it lets the codec drop non-reference frames that cannot be on screen at a target.
  // The frames returned are the same either way (tests compare the two); only `decoded` differs.
  bool decode_all = false;
};

struct VideoFrame {
  double timestamp = 0;  // seconds from the stream start of the frame shown (not the target time)
  Tensor rgb;            // u8 [H, W, 3], upright
};

struct DecodedVideo {
  std::vector<VideoFrame> frames;
  double fps = 0;       // the stream's average frame rate (av_guess_frame_rate); 0 for an image
  double duration = 0;  // seconds actually decoded (last frame time + one frame); 0 for an image
  int rotation = 0;     // degrees clockwise applied (0, 90, 180, 270), from the display matrix
  int64_t decoded = 0;  // frames the decoder produced (all, with decode_all; else fewer)
};

// Why a video or image gave no frames. bvllm_prep writes reason_name() into rejects.jsonl.
class DecodeError : public Error {
 public:
  enum class Reason {
    MissingFile,    // "missing file": the path does not exist
    NoVideoStream,  // "no video stream": a media file without a (non cover-art) video stream
    Undecodable,    // "undecodable": not a media file, no decoder, or the data does not decode
    ZeroFrames,     // "zero frames": a video stream that holds no frame
  };
  DecodeError(Reason reason, const std::string& message) : Error(message), reason_(reason) {}
  Reason reason() const { return reason_; }
  std::string_view reason_name() const { return name_of(reason_); }
  static std::string_view name_of(Reason reason);

 private:
  Reason reason_;
};

// The 1-fps (options.fps) frames of the video at `path`, as described above. Throws DecodeError
// (with the path in the message) when the file is missing, has no video stream, does not decode,
// or decodes to no frame.
DecodedVideo decode_video(const std::string& path, const DecodeOptions& options = {});

// An image file (JPEG, PNG, BMP, WebP, GIF's first frame, ...) through the same FFmpeg path as one
// frame (timestamp 0), resized by options.short_side (options.fps and max_frames are unused). As
// Pillow's Image.open(...).convert("RGB") does, EXIF orientation is not applied and alpha is
// dropped. Any decode error, a truncated file among them, is a DecodeError (Undecodable): an image
// has one picture, so a damaged one is not kept.
DecodedVideo decode_image(const std::string& path, const DecodeOptions& options = {});

// FFmpeg prints its own warnings (damaged packets, deprecated formats) to stderr. Programs that
// report failures themselves (bvllm_prep) call this once to keep only FFmpeg's fatal messages.
// It sets FFmpeg's process-wide log level.
void quiet_ffmpeg_log();

}  // namespace bvllm::data
