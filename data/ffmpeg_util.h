// Owning pointers for the FFmpeg objects that data/video_decoder.cc and data/video_encoder.cc
// use, and FFmpeg's error text. Internal to data/: include it only from .cc files that already
// include the FFmpeg headers.
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libswscale/swscale.h>
}

#include <memory>
#include <string>

namespace bvllm::data::ffmpeg {

struct CloseInput {
  void operator()(AVFormatContext* c) const { avformat_close_input(&c); }
};
struct FreeOutput {
  void operator()(AVFormatContext* c) const {
    if (c->pb != nullptr) avio_closep(&c->pb);
    avformat_free_context(c);
  }
};
struct FreeCodec {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FreeFrame {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct FreePacket {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct FreeSws {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct FreeDict {
  void operator()(AVDictionary* d) const { av_dict_free(&d); }
};

using InputPtr = std::unique_ptr<AVFormatContext, CloseInput>;   // opened with avformat_open_input
using OutputPtr = std::unique_ptr<AVFormatContext, FreeOutput>;  // an output context and its file
using CodecPtr = std::unique_ptr<AVCodecContext, FreeCodec>;
using FramePtr = std::unique_ptr<AVFrame, FreeFrame>;
using PacketPtr = std::unique_ptr<AVPacket, FreePacket>;
using SwsPtr = std::unique_ptr<SwsContext, FreeSws>;
using DictPtr = std::unique_ptr<AVDictionary, FreeDict>;

// av_strerror's text for an AVERROR code (av_err2str is a C99 compound literal, not C++).
inline std::string error_text(int code) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, text, sizeof text);
  return text;
}

}  // namespace bvllm::data::ffmpeg
