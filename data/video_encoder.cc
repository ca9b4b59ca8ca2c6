#include "data/video_encoder.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "data/ffmpeg_util.h"
#include "runtime/error.h"

namespace bvllm::data {
namespace {

using ffmpeg::FreeCodec;
using ffmpeg::FreeDict;
using ffmpeg::FreeFrame;
using ffmpeg::FreeOutput;
using ffmpeg::FreePacket;
using ffmpeg::FreeSws;

std::string av_error(int code) { return ffmpeg::error_text(code); }

void check(int code, const std::string& path, const char* call) {
  if (code < 0) throw Error(str_cat(path, ": ", call, " failed: ", av_error(code)));
}

}  // namespace

std::string default_video_codec() { return avcodec_find_encoder_by_name("libx264") != nullptr ? "libx264" : "mpeg4"; }

struct VideoEncoder::Impl {
  std::string path;
  VideoEncodeOptions options;
  std::unique_ptr<AVFormatContext, FreeOutput> output;
  std::unique_ptr<AVCodecContext, FreeCodec> encoder;
  AVStream* stream = nullptr;
  std::unique_ptr<SwsContext, FreeSws> sws;
  std::unique_ptr<AVFrame, FreeFrame> frame;
  std::unique_ptr<AVPacket, FreePacket> packet;
  int64_t frames = 0;
  bool created = false;  // the file exists (avio_open succeeded)
  bool finished = false;

  void open();
  // Closes the file of an unfinished encoder and removes what it wrote.
  void discard();

  // Sends `f` (nullptr: flush) and writes every packet the encoder returns.
  void encode(const AVFrame* f) {
    check(avcodec_send_frame(encoder.get(), f), path, "avcodec_send_frame");
    for (;;) {
      const int rc = avcodec_receive_packet(encoder.get(), packet.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      check(rc, path, "avcodec_receive_packet");
      av_packet_rescale_ts(packet.get(), encoder->time_base, stream->time_base);
      packet->stream_index = stream->index;
      // av_interleaved_write_frame takes the packet's reference (and blanks it) either way.
      check(av_interleaved_write_frame(output.get(), packet.get()), path, "av_interleaved_write_frame");
    }
  }
};

// Opens the container and the encoder (path and options set).
void VideoEncoder::Impl::open() {
  Impl& m = *this;
  const std::string& path = m.path;
  const VideoEncodeOptions& options = m.options;
  BVLLM_REQUIRE(options.width > 0 && options.height > 0 && options.width % 2 == 0 && options.height % 2 == 0, path,
                ": VideoEncodeOptions: width x height ", options.width, "x", options.height,
                " must be positive and even (yuv420p)");
  BVLLM_REQUIRE(options.fps > 0, path, ": VideoEncodeOptions: fps ", options.fps, " must be > 0");
  BVLLM_REQUIRE(options.crf >= 0 && options.crf <= 51, path, ": VideoEncodeOptions: crf ", options.crf,
                " must be in [0, 51]");
  BVLLM_REQUIRE(options.gop >= 0, path, ": VideoEncodeOptions: gop ", options.gop, " must be >= 0 (0 = fps)");
  const std::string codec_name = options.codec.empty() ? default_video_codec() : options.codec;
  m.options.codec = codec_name;
  const AVCodec* codec = avcodec_find_encoder_by_name(codec_name.c_str());
  BVLLM_REQUIRE(codec != nullptr && codec->type == AVMEDIA_TYPE_VIDEO, path, ": VideoEncodeOptions: codec \"",
                codec_name, "\" is not a video encoder of this FFmpeg");

  AVFormatContext* raw = nullptr;
  check(avformat_alloc_output_context2(&raw, nullptr, nullptr, path.c_str()), path,
        "avformat_alloc_output_context2 (the container comes from the file extension)");
  m.output.reset(raw);
  // No library version strings in the container: identical frames give identical files.
  m.output->flags |= AVFMT_FLAG_BITEXACT;

  m.encoder.reset(avcodec_alloc_context3(codec));
  BVLLM_REQUIRE(m.encoder != nullptr, path, ": avcodec_alloc_context3 failed (out of memory)");
  AVCodecContext* enc = m.encoder.get();
  enc->width = static_cast<int>(options.width);
  enc->height = static_cast<int>(options.height);
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = AVRational{1, options.fps};
  enc->framerate = AVRational{options.fps, 1};
  enc->gop_size = options.gop > 0 ? options.gop : options.fps;
  enc->color_range = AVCOL_RANGE_MPEG;
  enc->colorspace = AVCOL_SPC_SMPTE170M;
  enc->color_primaries = AVCOL_PRI_SMPTE170M;
  enc->color_trc = AVCOL_TRC_SMPTE170M;
  enc->thread_count = 1;
  enc->flags |= AV_CODEC_FLAG_BITEXACT;
  if (m.output->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

  AVDictionary* raw_dict = nullptr;
  if (codec_name == "libx264") {
    av_dict_set(&raw_dict, "preset", "veryfast", 0);
    av_dict_set(&raw_dict, "crf", std::to_string(options.crf).c_str(), 0);
    // x264's own log: warnings and errors only (its per-file statistics would flood a
    // generator's output).
    av_dict_set(&raw_dict, "x264-params", "log=1", 0);
  } else {
    enc->flags |= AV_CODEC_FLAG_QSCALE;
    enc->global_quality = FF_QP2LAMBDA * std::max(2, options.crf / 6);
    enc->max_b_frames = 0;
  }
  std::unique_ptr<AVDictionary, FreeDict> dict(raw_dict);
  raw_dict = dict.release();
  const int opened = avcodec_open2(enc, codec, &raw_dict);
  dict.reset(raw_dict);
  check(opened, path, str_cat("avcodec_open2 (", codec_name, ")").c_str());

  m.stream = avformat_new_stream(m.output.get(), nullptr);
  BVLLM_REQUIRE(m.stream != nullptr, path, ": avformat_new_stream failed (out of memory)");
  m.stream->time_base = enc->time_base;  // the muxer may pick another; packets are rescaled to it
  m.stream->avg_frame_rate = enc->framerate;
  check(avcodec_parameters_from_context(m.stream->codecpar, enc), path, "avcodec_parameters_from_context");

  if (!(m.output->oformat->flags & AVFMT_NOFILE)) {
    check(avio_open(&m.output->pb, path.c_str(), AVIO_FLAG_WRITE), path, "avio_open");
    m.created = true;
  }
  check(avformat_write_header(m.output.get(), nullptr), path, "avformat_write_header");

  // RGB24 to yuv420p, BT.601 limited range (swscale's default matrix for YUV output).
  m.sws.reset(sws_getContext(enc->width, enc->height, AV_PIX_FMT_RGB24, enc->width, enc->height, AV_PIX_FMT_YUV420P,
                             SWS_BILINEAR, nullptr, nullptr, nullptr));
  BVLLM_REQUIRE(m.sws != nullptr, path, ": sws_getContext failed");
  m.frame.reset(av_frame_alloc());
  m.packet.reset(av_packet_alloc());
  BVLLM_REQUIRE(m.frame != nullptr && m.packet != nullptr, path, ": av_frame_alloc failed (out of memory)");
  m.frame->format = enc->pix_fmt;
  m.frame->width = enc->width;
  m.frame->height = enc->height;
  m.frame->color_range = enc->color_range;
  m.frame->colorspace = enc->colorspace;
  check(av_frame_get_buffer(m.frame.get(), 0), path, "av_frame_get_buffer");
}

void VideoEncoder::Impl::discard() {
  sws.reset();
  encoder.reset();
  output.reset();  // closes the file
  std::error_code ignored;
  if (created) std::filesystem::remove(path, ignored);
  created = false;
}

VideoEncoder::VideoEncoder(const std::string& path, const VideoEncodeOptions& options)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->options = options;
  try {
    impl_->open();
  } catch (...) {
    impl_->discard();
    throw;
  }
}

VideoEncoder::~VideoEncoder() {
  if (!impl_->finished) impl_->discard();
}

void VideoEncoder::add_frame(std::span<const uint8_t> rgb) {
  Impl& m = *impl_;
  BVLLM_REQUIRE(!m.finished, m.path, ": add_frame after finish");
  const size_t expected = static_cast<size_t>(m.options.width * m.options.height * 3);
  BVLLM_REQUIRE(rgb.size() == expected, m.path, ": frame ", m.frames, " has ", rgb.size(), " bytes, expected ",
                expected, " (", m.options.height, " x ", m.options.width, " x 3 RGB)");
  // The encoder may still hold the previous frame's buffer (lookahead); write into a fresh one.
  check(av_frame_make_writable(m.frame.get()), m.path, "av_frame_make_writable");
  const uint8_t* src[1] = {rgb.data()};
  const int src_stride[1] = {static_cast<int>(m.options.width * 3)};
  sws_scale(m.sws.get(), src, src_stride, 0, static_cast<int>(m.options.height), m.frame->data, m.frame->linesize);
  m.frame->pts = m.frames++;
  m.encode(m.frame.get());
}

void VideoEncoder::add_frame(const Tensor& rgb) {
  Impl& m = *impl_;
  BVLLM_REQUIRE(rgb.device().is_cpu() && rgb.dtype() == DType::U8 && rgb.dim() == 3 &&
                    rgb.size(0) == m.options.height && rgb.size(1) == m.options.width && rgb.size(2) == 3,
                m.path, ": frame ", m.frames, ": expected a u8 [", m.options.height, ", ", m.options.width,
                ", 3] CPU tensor, got ", rgb.str());
  const Tensor packed = rgb.contiguous();
  add_frame(std::span<const uint8_t>(packed.data<uint8_t>(), packed.nbytes()));
}

void VideoEncoder::finish() {
  Impl& m = *impl_;
  BVLLM_REQUIRE(!m.finished, m.path, ": finish called twice");
  BVLLM_REQUIRE(m.frames > 0, m.path, ": a video needs at least one frame");
  m.encode(nullptr);
  check(av_write_trailer(m.output.get()), m.path, "av_write_trailer");
  check(avio_closep(&m.output->pb), m.path, "avio_closep");
  m.finished = true;
}

const std::string& VideoEncoder::codec() const { return impl_->options.codec; }
int64_t VideoEncoder::frames() const { return impl_->frames; }

}  // namespace bvllm::data
