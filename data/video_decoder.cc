#include "data/video_decoder.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "data/clip_image.h"
#include "data/ffmpeg_util.h"

namespace bvllm::data {

std::string_view DecodeError::name_of(Reason reason) {
  switch (reason) {
    case Reason::MissingFile: return "missing file";
    case Reason::NoVideoStream: return "no video stream";
    case Reason::Undecodable: return "undecodable";
    case Reason::ZeroFrames: return "zero frames";
  }
  return "undecodable";
}

void quiet_ffmpeg_log() { av_log_set_level(AV_LOG_FATAL); }

namespace {

using Reason = DecodeError::Reason;

using ffmpeg::CodecPtr;
using ffmpeg::FramePtr;
using ffmpeg::InputPtr;
using ffmpeg::PacketPtr;
using ffmpeg::SwsPtr;

std::string av_error(int code) { return ffmpeg::error_text(code); }

[[noreturn]] void fail(Reason reason, const std::string& path, const std::string& what) {
  throw DecodeError(reason, str_cat(path, ": ", what));
}

// A call that must succeed; `code` < 0 is turned into an Undecodable DecodeError.
void check(int code, const std::string& path, const char* call) {
  if (code < 0) fail(Reason::Undecodable, path, str_cat(call, " failed: ", av_error(code)));
}

FramePtr new_frame(const std::string& path) {
  FramePtr frame(av_frame_alloc());
  if (!frame) fail(Reason::Undecodable, path, "av_frame_alloc failed (out of memory)");
  return frame;
}

void check_options(const DecodeOptions& options) {
  BVLLM_REQUIRE(std::isfinite(options.fps) && options.fps > 0, "DecodeOptions: fps ", options.fps,
                " must be a positive number");
  BVLLM_REQUIRE(options.threads >= 0, "DecodeOptions: threads ", options.threads, " must be >= 0 (0 = all cores)");
  BVLLM_REQUIRE(options.max_frames >= 1, "DecodeOptions: max_frames ", options.max_frames, " must be >= 1");
  BVLLM_REQUIRE(options.short_side >= 0, "DecodeOptions: short_side ", options.short_side,
                " must be >= 0 (0 keeps the decoded size)");
}

// --- opening -------------------------------------------------------------------------------------

struct Source {
  InputPtr input;
  AVStream* stream = nullptr;
  CodecPtr decoder;
};

// The video stream to decode: av_find_best_stream's choice unless it is cover art (an attached
// picture in an audio file), which a video sample must not be taken from.
int pick_video_stream(AVFormatContext* input, bool allow_cover_art) {
  const auto usable = [&](int i) {
    const AVStream* st = input->streams[i];
    return st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO &&
           (allow_cover_art || !(st->disposition & AV_DISPOSITION_ATTACHED_PIC));
  };
  const int best = av_find_best_stream(input, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (best >= 0 && usable(best)) return best;
  for (unsigned i = 0; i < input->nb_streams; ++i)
    if (usable(static_cast<int>(i))) return static_cast<int>(i);
  return -1;
}

Source open_source(const std::string& path, int threads, bool image) {
  Source source;
  AVFormatContext* raw = nullptr;
  // On failure avformat_open_input frees what it allocated and leaves raw null.
  const int rc = avformat_open_input(&raw, path.c_str(), nullptr, nullptr);
  if (rc == AVERROR(ENOENT) || rc == AVERROR(ENOTDIR)) fail(Reason::MissingFile, path, "no such file");
  check(rc, path, "avformat_open_input");
  source.input.reset(raw);
  check(avformat_find_stream_info(raw, nullptr), path, "avformat_find_stream_info");

  const int index = pick_video_stream(raw, /*allow_cover_art=*/image);
  if (index < 0)
    fail(Reason::NoVideoStream, path,
         str_cat("no video stream among its ", raw->nb_streams, " stream(s) (format ", raw->iformat->name, ")"));
  // The demuxer drops the packets of every other stream (audio, subtitles, data) before they are
  // read: no decoding and no messages about a damaged audio frame (§3: Megamind.avi's AC-3).
  for (unsigned i = 0; i < raw->nb_streams; ++i)
    if (static_cast<int>(i) != index) raw->streams[i]->discard = AVDISCARD_ALL;
  source.stream = raw->streams[index];

  const AVCodecParameters* par = source.stream->codecpar;
  const AVCodec* codec = avcodec_find_decoder(par->codec_id);
  if (!codec)
    fail(Reason::Undecodable, path, str_cat("no decoder for the video codec ", avcodec_get_name(par->codec_id)));
  source.decoder.reset(avcodec_alloc_context3(codec));
  if (!source.decoder) fail(Reason::Undecodable, path, "avcodec_alloc_context3 failed (out of memory)");
  AVCodecContext* dec = source.decoder.get();
  check(avcodec_parameters_to_context(dec, par), path, "avcodec_parameters_to_context");
  dec->pkt_timebase = source.stream->time_base;  // best_effort_timestamp comes in the stream's units
  // The library default is one thread (§1.1). Frame threads add one frame of delay each, which the
  // drain at the end returns.
  dec->thread_count = threads;
  dec->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
  // A picture is all or nothing: without this the JPEG decoder finishes a truncated file with a
  // warning ("EOI missing, emulating") and grey blocks, where Pillow refuses it.
  if (image) dec->err_recognition |= AV_EF_EXPLODE | AV_EF_CRCCHECK | AV_EF_BITSTREAM | AV_EF_BUFFER;
  check(avcodec_open2(dec, codec, nullptr), path, "avcodec_open2");
  return source;
}

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// The clockwise rotation (0, 90, 180, 270) that makes the picture upright, from the stream's display
// matrix: fftools' get_rotation (theta = -round(av_display_rotation_get(m)), normalized to
// [0, 360)), rounded to a multiple of 90 as the CLI's autorotation uses it (§1.1).
int stream_rotation(const AVStream* stream) {
  size_t size = 0;
  const uint8_t* matrix = av_stream_get_side_data(stream, AV_PKT_DATA_DISPLAYMATRIX, &size);
  if (!matrix || size < 9 * sizeof(int32_t)) return 0;
  const double angle = av_display_rotation_get(reinterpret_cast<const int32_t*>(matrix));
  if (std::isnan(angle)) return 0;
  double theta = -std::round(angle);
  theta -= 360 * std::floor(theta / 360 + 0.9 / 360);
  const int quarter = static_cast<int>(std::lround(theta / 90.0)) % 4;
  return quarter * 90;
}

// --- pixels --------------------------------------------------------------------------------------

// swscale's colour matrix for the stream's declared colour space; BT.601 when unspecified, as
// FFmpeg's own default (SWS_CS_DEFAULT) has it.
int sws_colorspace(AVColorSpace space) {
  switch (space) {
    case AVCOL_SPC_BT709: return SWS_CS_ITU709;
    case AVCOL_SPC_FCC: return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M: return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL: return SWS_CS_BT2020;
    default: return SWS_CS_DEFAULT;
  }
}

// The deprecated JPEG-range formats (yuvj*) as their plain twins plus "full range", which is how
// swscale wants to be told (it warns about the yuvj names).
std::pair<AVPixelFormat, bool> plain_format(AVPixelFormat format, bool full_range) {
  switch (format) {
    case AV_PIX_FMT_YUVJ420P: return {AV_PIX_FMT_YUV420P, true};
    case AV_PIX_FMT_YUVJ422P: return {AV_PIX_FMT_YUV422P, true};
    case AV_PIX_FMT_YUVJ444P: return {AV_PIX_FMT_YUV444P, true};
    case AV_PIX_FMT_YUVJ440P: return {AV_PIX_FMT_YUV440P, true};
    case AV_PIX_FMT_YUVJ411P: return {AV_PIX_FMT_YUV411P, true};
    default: return {format, full_range};
  }
}

// Rotates an RGB image clockwise by 90, 180 or 270 degrees.
Tensor rotate_clockwise(const Tensor& image, int degrees) {
  const int64_t h = image.size(0), w = image.size(1);
  const bool swap = degrees == 90 || degrees == 270;
  Tensor out = Tensor::empty({swap ? w : h, swap ? h : w, 3}, DType::U8);
  const uint8_t* src = image.data<uint8_t>();
  uint8_t* dst = out.data<uint8_t>();
  const int64_t out_w = swap ? h : w;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      // Where source pixel (y, x) lands.
      int64_t oy = y, ox = x;
      if (degrees == 90) oy = x, ox = h - 1 - y;
      if (degrees == 180) oy = h - 1 - y, ox = w - 1 - x;
      if (degrees == 270) oy = w - 1 - x, ox = y;
      std::copy_n(src + (y * w + x) * 3, 3, dst + (oy * out_w + ox) * 3);
    }
  }
  return out;
}

// Decoded frames to upright, resized RGB. Keeps one swscale context, reused while the frame format
// and size stay the same.
class RgbConverter {
 public:
  RgbConverter(std::string path, int rotation, int64_t short_side)
      : path_(std::move(path)), rotation_(rotation), short_side_(short_side) {}

  Tensor operator()(const AVFrame* frame) {
    const int w = frame->width, h = frame->height;
    if (w <= 0 || h <= 0) fail(Reason::Undecodable, path_, str_cat("the decoder gave a ", w, "x", h, " frame"));
    const auto [format, full_range] =
        plain_format(static_cast<AVPixelFormat>(frame->format), frame->color_range == AVCOL_RANGE_JPEG);
    if (w != last_w_ || h != last_h_ || format != last_format_) {
      configured_sws_ = nullptr;  // a new context, possibly at the old one's address
      last_w_ = w, last_h_ = h, last_format_ = format;
    }
    // Bicubic as the CLI's auto-inserted scaler, with full chroma interpolation so the chroma is
    // interpolated rather than repeated. Not SWS_ACCURATE_RND: it leaves swscale's SIMD path and
    // costs 12 ms instead of 0.4 ms per 720p frame here.
    SwsContext* sws = sws_getCachedContext(sws_.release(), w, h, format, w, h, AV_PIX_FMT_RGB24,
                                           SWS_BICUBIC | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
    sws_.reset(sws);
    if (!sws)
      fail(Reason::Undecodable, path_,
           str_cat("swscale cannot convert ", av_get_pix_fmt_name(format), " ", w, "x", h, " frames to RGB"));
    const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(format);
    const int space = sws_colorspace(frame->colorspace);
    const bool yuv = desc && !(desc->flags & AV_PIX_FMT_FLAG_RGB) && desc->nb_components >= 3;
    if (yuv && (sws != configured_sws_ || space != configured_space_ || full_range != configured_full_range_)) {
      // The source matrix and range; the output is full-range RGB.
      const int rc = sws_setColorspaceDetails(sws, sws_getCoefficients(space), full_range ? 1 : 0,
                                              sws_getCoefficients(SWS_CS_DEFAULT), /*dstRange=*/1, /*brightness=*/0,
                                              /*contrast=*/1 << 16, /*saturation=*/1 << 16);
      if (rc < 0)
        fail(Reason::Undecodable, path_,
             str_cat("sws_setColorspaceDetails refused the colour space of ", av_get_pix_fmt_name(format)));
      configured_sws_ = sws;
      configured_space_ = space;
      configured_full_range_ = full_range;
    }
    Tensor rgb = Tensor::empty({h, w, 3}, DType::U8);
    uint8_t* dst[4] = {rgb.data<uint8_t>(), nullptr, nullptr, nullptr};
    const int dst_stride[4] = {w * 3, 0, 0, 0};
    const int rows = sws_scale(sws, frame->data, frame->linesize, 0, h, dst, dst_stride);
    if (rows != h) fail(Reason::Undecodable, path_, str_cat("sws_scale wrote ", rows, " of ", h, " rows"));

    if (rotation_ != 0) rgb = rotate_clockwise(rgb, rotation_);
    if (short_side_ > 0) {
      const auto [out_h, out_w] = clip_resize_size(rgb.size(0), rgb.size(1), static_cast<int>(short_side_));
      if (out_h != rgb.size(0) || out_w != rgb.size(1)) rgb = resize_bicubic_pil(rgb, out_h, out_w);
    }
    return rgb;
  }

 private:
  std::string path_;
  int rotation_;
  int64_t short_side_;
  SwsPtr sws_;
  // What sws_setColorspaceDetails was last told, so that it runs once per context and colour space.
  int last_w_ = 0, last_h_ = 0;
  AVPixelFormat last_format_ = AV_PIX_FMT_NONE;
  const SwsContext* configured_sws_ = nullptr;
  int configured_space_ = -1;
  bool configured_full_range_ = false;
};

// --- choosing the frames -------------------------------------------------------------------------

// Slack for comparing times in seconds: far below any frame interval, above rounding in
// ts * time_base.
constexpr double kEps = 1e-6;

// A jump forward in time longer than this between two frames is taken for a timestamp
// discontinuity (an MPEG-TS clock reset, damaged timestamps), not a hole: the clock is re-anchored
// so the next frame follows the previous one. Otherwise garbage timestamps could ask for millions
// of repeated frames.
constexpr double kMaxJump = 60.0;

// floor((i + 0.5) * n / m) for i < m: m of n items, uniformly (the cap's subsampling).
int64_t uniform_pick(int64_t i, int64_t n, int64_t m) { return ((2 * i + 1) * n) / (2 * m); }

// The target times t_k = (base(k) + 0.5) / fps, where base(k) = k unless the container says there
// are more than max_frames targets, in which case k < max_frames picks uniformly among them.
class Targets {
 public:
  Targets(double fps, int64_t max_frames, std::optional<double> estimated_duration) : fps_(fps), max_(max_frames) {
    if (estimated_duration && *estimated_duration > 0) {
      const double n = std::min(std::ceil(*estimated_duration * fps - 0.5 - kEps), 1e12);
      if (n > static_cast<double>(max_frames)) planned_ = static_cast<int64_t>(n);
    }
  }
  bool has(int64_t k) const { return planned_ == 0 || k < max_; }
  double time(int64_t k) const {
    const int64_t base = planned_ == 0 ? k : uniform_pick(k, planned_, max_);
    return (static_cast<double>(base) + 0.5) / fps_;
  }
  // The first target k >= from with time(k) >= t (max_frames when a plan has none left).
  int64_t first_at_or_after(double t, int64_t from) const {
    if (planned_ == 0) return std::max(from, static_cast<int64_t>(std::ceil(std::min(t * fps_ - 0.5 - kEps, 1e15))));
    int64_t lo = from, hi = max_;  // time() is non-decreasing in k
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (time(mid) < t - kEps)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo;
  }

 private:
  double fps_;
  int64_t max_;
  int64_t planned_ = 0;  // the estimated number of targets when it exceeds the cap, else 0
};

// The decode of one video: the loop of ../shared/research/data-pipeline.md §1.5.
class VideoDecode {
 public:
  VideoDecode(std::string path, const DecodeOptions& options)
      : path_(std::move(path)),
        options_(options),
        threads_(resolve_threads(options.threads)),
        source_(open_source(path_, threads_, /*image=*/false)),
        stream_(source_.stream),
        dec_(source_.decoder.get()),
        time_base_(av_q2d(stream_->time_base)),
        targets_(options.fps, options.max_frames, estimated_duration()),
        held_(new_frame(path_)),
        rotation_(stream_rotation(stream_)),
        convert_(path_, rotation_, options.short_side) {
    const AVRational rate = av_guess_frame_rate(source_.input.get(), stream_, nullptr);
    if (rate.num > 0 && rate.den > 0) fps_ = av_q2d(rate);
    // With no rate at all, FFmpeg's own fallback for raw streams: 25 fps.
    frame_duration_ = fps_ > 0 ? 1.0 / fps_ : 1.0 / 25;
    if (stream_->start_time != AV_NOPTS_VALUE) start_ = static_cast<double>(stream_->start_time) * time_base_;
  }

  DecodedVideo run() {
    frame_ = new_frame(path_);
    AVFormatContext* input = source_.input.get();
    bool reached_end = false;
    while (!done()) {
      maybe_seek();
      PacketPtr packet(av_packet_alloc());
      if (!packet) fail(Reason::Undecodable, path_, "av_packet_alloc failed (out of memory)");
      const int rc = av_read_frame(input, packet.get());
      if (rc < 0) {
        if (rc != AVERROR_EOF) note_error("av_read_frame", rc);  // a truncated file: keep what decoded
        reached_end = true;
        break;
      }
      if (packet->stream_index != stream_->index) continue;
      pending_.push_back(std::move(packet));
      if (pending_.size() > kLookahead) send_front();
    }
    if (reached_end) {
      while (!pending_.empty()) send_front();
      // Drain: the frames still inside the decoder (reordering, frame threads) come out now.
      const int sent = avcodec_send_packet(dec_, nullptr);
      if (sent < 0 && sent != AVERROR_EOF) note_error("avcodec_send_packet (drain)", sent);
      receive();
    }
    return finish();
  }

 private:
  // Packets wait this many places before they go to the decoder, so that the presentation time
  // of the frame that follows each one is usually known (B-frames move a few places); the last
  // kHistory packets sent serve the same purpose for frames presented after a later-decoded one.
  static constexpr size_t kLookahead = 8;
  static constexpr size_t kHistory = 16;

  // Sends the oldest pending packet. A frame that no target will take (the next frame in
  // presentation order comes before the next target after it) is decoded only when other frames
  // need it as a reference: skip_frame = AVDISCARD_NONREF lets the decoder drop it otherwise,
  // which saves ~40% of an x264 file's decoding (§1.4) and changes no pick. Packets without a
  // timestamp, or with no later one in sight, are always decoded.
  void send_front() {
    PacketPtr packet = std::move(pending_.front());
    pending_.pop_front();
    dec_->skip_frame = !options_.decode_all && !needed(packet->pts) ? AVDISCARD_NONREF : AVDISCARD_DEFAULT;
    const int64_t ts = packet->dts != AV_NOPTS_VALUE ? packet->dts : packet->pts;
    if (ts != AV_NOPTS_VALUE) last_sent_ = ts;
    sent_pts_.push_back(packet->pts);
    if (sent_pts_.size() > kHistory) sent_pts_.pop_front();
    const int sent = avcodec_send_packet(dec_, packet.get());
    if (sent < 0) note_error("avcodec_send_packet", sent);  // a damaged packet: skip it
    receive();
  }

  // Whether the frame presented at stream time `pts` can be the one on screen at a target. Its
  // successor in presentation order is taken as the earliest later pts among the packets in
  // sight; a frame out of sight can only be later than that, which makes the answer "needed"
  // more often, never less: the rule errs on the side of decoding.
  bool needed(int64_t pts) const {
    if (pts == AV_NOPTS_VALUE || !start_) return true;
    int64_t successor = AV_NOPTS_VALUE;
    const auto consider = [&](int64_t other) {
      if (other > pts && (successor == AV_NOPTS_VALUE || other < successor)) successor = other;
    };
    for (const PacketPtr& other : pending_) {
      if (other->pts == AV_NOPTS_VALUE) return true;
      consider(other->pts);
    }
    for (int64_t other : sent_pts_) {
      if (other == AV_NOPTS_VALUE) return true;
      consider(other);
    }
    if (successor == AV_NOPTS_VALUE) return true;
    const double t = static_cast<double>(pts) * time_base_ - *start_;
    const double t_next = static_cast<double>(successor) * time_base_ - *start_;
    // The first target at or after t (targets before next_ are taken already).
    const int64_t k = targets_.first_at_or_after(t, next_);
    return targets_.has(k) && targets_.time(k) < t_next - kEps;
  }

  std::optional<double> estimated_duration() const {
    if (stream_->duration != AV_NOPTS_VALUE && stream_->duration > 0)
      return static_cast<double>(stream_->duration) * time_base_;
    const AVFormatContext* input = source_.input.get();
    if (input->duration != AV_NOPTS_VALUE && input->duration > 0)
      return static_cast<double>(input->duration) / AV_TIME_BASE;
    return std::nullopt;
  }

  bool done() const { return !targets_.has(next_); }

  void note_error(const char* call, int code) {
    if (errors_++ == 0) first_error_ = str_cat(call, ": ", av_error(code));
  }

  void receive() {
    AVFrame* frame = frame_.get();
    while (true) {
      const int rc = avcodec_receive_frame(dec_, frame);
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      if (rc < 0) {
        note_error("avcodec_receive_frame", rc);
        return;
      }
      ++decoded_;
      on_frame(frame);
      av_frame_unref(frame);
    }
  }

  // Seconds from the stream start of a frame, or nullopt without a timestamp.
  std::optional<double> frame_time(const AVFrame* frame) {
    const int64_t ts = frame->best_effort_timestamp;
    if (ts == AV_NOPTS_VALUE) return std::nullopt;
    const double seconds = static_cast<double>(ts) * time_base_;
    // No start_time in the container: the first timestamped frame fixes it, counting the frames
    // without timestamps that came before it.
    if (!start_) start_ = seconds - (have_held_ ? held_time_ + frame_duration_ : 0.0);
    return seconds - *start_;
  }

  void on_frame(AVFrame* frame) {
    const std::optional<double> time = frame_time(frame);
    if (seek_check_) {  // the first frame after a seek ahead
      seek_check_ = false;
      if (!time || *time <= held_time_ + kEps) {
        // The demuxer went back to an earlier keyframe than the index promised: correct (the
        // frames seen already are dropped below) but wasted work, so no more seeks in this file.
        seeking_ = false;
      } else if (*time > seek_target_ + kEps) {
        // It landed after the target, so the frame on screen at the target was skipped (a
        // keyframe presented later than its index entry says). Go back to the last frame seen
        // and decode forward from there, without seeking again.
        seek_back();
        return;
      }
    }
    if (redecode_until_) {  // after a seek: frames up to the last one seen came through already
      if (!time || *time <= *redecode_until_ + kEps) return;
      redecode_until_.reset();
    }
    // A frame without a timestamp, or one that does not move time forward, is one frame after the
    // previous frame.
    double t = time.value_or(0.0);
    if (have_held_ && (!time || t <= held_time_ + kEps)) t = held_time_ + frame_duration_;
    if (have_held_ && t > held_time_ + kMaxJump) {
      *start_ += t - (held_time_ + frame_duration_);
      t = held_time_ + frame_duration_;
      seeking_ = false;  // the index no longer matches the clock
    }
    // A synthesized time cannot be re-anchored after a jump, so such a file is decoded forward.
    if (!time) seeking_ = false;

    if (have_held_) {
      while (targets_.has(next_) && t > targets_.time(next_) + kEps) commit();
    }
    av_frame_unref(held_.get());
    av_frame_move_ref(held_.get(), frame);
    held_time_ = t;
    held_ts_ = frame->best_effort_timestamp;
    held_rgb_ = Tensor();
    have_held_ = true;
  }

  // The held frame is the one on screen at target next_.
  void commit() {
    if (!held_rgb_.defined()) held_rgb_ = convert_(held_.get());
    frames_.push_back({held_time_, held_rgb_});
    ++next_;
  }

  // Seeks ahead when the index holds a keyframe after what was sent to the decoder and before the next target.
  // The index (in the demuxer's own timeline: DTS for MP4) only decides whether a seek pays; the
  // seek itself asks for the target's presentation time, and the demuxer lands on the keyframe
  // at or before it. The lookup keeps a margin of 8 frames below the target for the reorder delay
  // between a keyframe's index entry and its presentation.
  void maybe_seek() {
    if (options_.decode_all || !seeking_ || checked_target_ == next_ || last_sent_ == AV_NOPTS_VALUE || !start_) return;
    checked_target_ = next_;
    const double target = targets_.time(next_);
    const auto stream_ts = [&](double seconds) {
      return static_cast<int64_t>(std::floor((seconds + *start_) / time_base_));
    };
    const AVIndexEntry* entry =
        avformat_index_get_entry_from_timestamp(stream_, stream_ts(target - 8 * frame_duration_), AVSEEK_FLAG_BACKWARD);
    if (!entry || !(entry->flags & AVINDEX_KEYFRAME)) return;
    // Worth it only when it skips more than the frames already in flight in the decoder.
    const auto in_flight = static_cast<int64_t>(std::ceil((threads_ + 2) * frame_duration_ / time_base_));
    if (entry->timestamp <= last_sent_ + in_flight) return;
    if (av_seek_frame(source_.input.get(), stream_->index, stream_ts(target), AVSEEK_FLAG_BACKWARD) < 0) {
      seeking_ = false;  // decode forward instead; the read position is unchanged
      return;
    }
    avcodec_flush_buffers(dec_);
    pending_.clear();  // all before the keyframe, and the frame for the target is at or after it
    sent_pts_.clear();
    last_sent_ = entry->timestamp;
    seek_check_ = true;
    seek_target_ = target;
    if (have_held_) redecode_until_ = held_time_;
  }

  void seek_back() {
    seeking_ = false;
    const int64_t back =
        have_held_ && held_ts_ != AV_NOPTS_VALUE ? held_ts_ : static_cast<int64_t>(std::floor(*start_ / time_base_));
    const int rc = av_seek_frame(source_.input.get(), stream_->index, back, AVSEEK_FLAG_BACKWARD);
    check(rc, path_, "av_seek_frame (back after a seek past the target)");
    avcodec_flush_buffers(dec_);
    pending_.clear();
    sent_pts_.clear();
    if (have_held_) redecode_until_ = held_time_;
  }

  DecodedVideo finish() {
    if (decoded_ == 0) {
      if (errors_ > 0)
        fail(Reason::Undecodable, path_,
             str_cat("no frame decoded; ", errors_, " error(s), the first: ", first_error_));
      fail(Reason::ZeroFrames, path_, "the video stream holds no frame");
    }
    DecodedVideo out;
    out.fps = fps_;
    out.duration = held_time_ + frame_duration_;
    out.rotation = rotation_;
    out.decoded = decoded_;
    if (!done()) {
      // The end of the file: the last frame stays on screen until `duration`.
      while (targets_.has(next_) && targets_.time(next_) < out.duration - kEps) commit();
      if (frames_.empty()) commit();  // shorter than half a period: its last frame
    }
    if (static_cast<int64_t>(frames_.size()) > options_.max_frames) {
      // The container underestimated the length: subsample the targets now, the same way.
      const auto n = static_cast<int64_t>(frames_.size());
      std::vector<VideoFrame> kept;
      kept.reserve(options_.max_frames);
      for (int64_t i = 0; i < options_.max_frames; ++i)
        kept.push_back(frames_[uniform_pick(i, n, options_.max_frames)]);
      frames_ = std::move(kept);
    }
    out.frames = std::move(frames_);
    return out;
  }

  std::string path_;
  DecodeOptions options_;
  int threads_;
  Source source_;
  AVStream* stream_;
  AVCodecContext* dec_;
  double time_base_;
  Targets targets_;
  FramePtr frame_;  // the decoder's output
  FramePtr held_;   // the last decoded frame: on screen until the next one
  int rotation_;
  RgbConverter convert_;

  double fps_ = 0;
  double frame_duration_ = 0;
  std::optional<double> start_;  // the stream's start in seconds
  bool have_held_ = false;
  double held_time_ = 0;
  int64_t held_ts_ = AV_NOPTS_VALUE;
  Tensor held_rgb_;   // held_ converted, once a target took it
  int64_t next_ = 0;  // the next target
  std::vector<VideoFrame> frames_;
  int64_t decoded_ = 0;
  int64_t errors_ = 0;
  std::string first_error_;

  bool seeking_ = true;
  int64_t checked_target_ = -1;
  int64_t last_sent_ = AV_NOPTS_VALUE;  // dts of the last packet sent to the decoder, stream time base
  bool seek_check_ = false;             // the next frame is the first after a seek
  double seek_target_ = 0;
  std::optional<double> redecode_until_;
  std::deque<PacketPtr> pending_;  // video packets read and not yet sent (kLookahead of them)
  std::deque<int64_t> sent_pts_;   // the pts of the last kHistory packets sent
};

}  // namespace

DecodedVideo decode_video(const std::string& path, const DecodeOptions& options) {
  check_options(options);
  VideoDecode decode(path, options);
  return decode.run();
}

DecodedVideo decode_image(const std::string& path, const DecodeOptions& options) {
  check_options(options);
  Source source = open_source(path, /*threads=*/1, /*image=*/true);
  AVCodecContext* dec = source.decoder.get();
  PacketPtr packet(av_packet_alloc());
  if (!packet) fail(Reason::Undecodable, path, "av_packet_alloc failed (out of memory)");
  FramePtr frame = new_frame(path);

  // The first picture, and any error on the way to it, which for a single picture means damage.
  const auto take_frame = [&]() -> bool {
    const int rc = avcodec_receive_frame(dec, frame.get());
    if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return false;
    check(rc, path, "avcodec_receive_frame");
    return true;
  };
  bool have = false;
  while (!have) {
    const int rc = av_read_frame(source.input.get(), packet.get());
    if (rc == AVERROR_EOF) break;
    check(rc, path, "av_read_frame");
    if (packet->stream_index == source.stream->index) {
      const int sent = avcodec_send_packet(dec, packet.get());
      av_packet_unref(packet.get());
      check(sent, path, "avcodec_send_packet");
      have = take_frame();
    } else {
      av_packet_unref(packet.get());
    }
  }
  if (!have) {
    const int sent = avcodec_send_packet(dec, nullptr);
    if (sent != AVERROR_EOF) check(sent, path, "avcodec_send_packet (drain)");
    have = take_frame();
  }
  if (!have) fail(Reason::ZeroFrames, path, "the image holds no picture");
  if ((frame->flags & AV_FRAME_FLAG_CORRUPT) || frame->decode_error_flags != 0)
    fail(Reason::Undecodable, path,
         str_cat("the picture is damaged (decode_error_flags ", frame->decode_error_flags, ")"));

  RgbConverter convert(path, /*rotation=*/0, options.short_side);
  DecodedVideo out;
  out.frames.push_back({0.0, convert(frame.get())});
  out.decoded = 1;
  return out;
}

}  // namespace bvllm::data
