// Data pipeline cases: prep_decode (1-fps extraction, beside the ffmpeg CLI doing the same work;
// it needs the ffmpeg command line, which tools/setup.sh installs, to make its input) and loader
// (the training loader on a generated shard).
#include <sys/wait.h>
#include <unistd.h>  // defines: getpid

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "data/bert_tokenizer.h"
#include "data/jpeg.h"
#include "data/loader.h"
#include "data/qwen2_tokenizer.h"
#include "data/shard.h"
#include "data/video_decoder.h"
#include "runtime/error.h"
#include "tools/bench/bench.h"

namespace bvllm::bench {

namespace {

namespace fs = std::filesystem;

// Runs a shell command, returning its wall time in milliseconds; a failure is an error naming it.
double run_timed(const std::string& command) {
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(command.c_str());
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  BVLLM_REQUIRE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "command failed: ", command);
  return ms;
}

// The bench clip, made once: 60 s of testsrc2 at 1280x720, 30 fps, x264 with its defaults
// (CRF 23, preset medium, GOP 250, 3 B-frames), as ../shared/research/data-pipeline.md §1.4 used.
std::string bench_clip() {
  const fs::path clip = fs::temp_directory_path() / "bvllm_bench_prep_decode_720p30_60s.mp4";
  if (fs::exists(clip)) return clip.string();
  BVLLM_REQUIRE(std::system("ffmpeg -version >/dev/null 2>&1") == 0,
                "prep_decode needs the ffmpeg command line to make its clip (tools/setup.sh installs it)");
  const std::string tmp = clip.string() + ".tmp.mp4";
  run_timed("ffmpeg -v error -y -f lavfi -i testsrc2=s=1280x720:r=30:d=60 -c:v libx264 -pix_fmt yuv420p " + tmp);
  fs::rename(tmp, clip);
  return clip.string();
}

double load_average() {
  double load[1] = {0};
  return getloadavg(load, 1) == 1 ? load[0] : -1;
}

// 1-fps frames of a 60-s 720p H.264 clip, resized to 336 on the short side, as bvllm_prep
// extracts them; beside it, in turn, the ffmpeg CLI's fps=1 + scale to the same size (raw output
// thrown away, its default threads) and decode_video with decode_all (no skipped work). The runs
// alternate so that load from other processes on the machine falls on all three alike.
Result prep_decode(const Options& options) {
  const std::string clip = bench_clip();
  const std::string cli = "ffmpeg -v error -i " + clip + " -vf fps=1,scale=-2:336 -f rawvideo -y /dev/null";
  const data::DecodeOptions decode{.fps = 1, .threads = 0, .short_side = 336};
  data::DecodeOptions all = decode;
  all.decode_all = true;

  int64_t frames = 0, decoded = 0, decoded_all = 0;
  double duration = 0;
  const auto ours = [&] {
    const auto start = std::chrono::steady_clock::now();
    const data::DecodedVideo video = data::decode_video(clip, decode);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    frames = static_cast<int64_t>(video.frames.size());
    decoded = video.decoded;
    duration = video.duration;
    return ms;
  };
  const auto everything = [&] {
    const auto start = std::chrono::steady_clock::now();
    decoded_all = data::decode_video(clip, all).decoded;
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };

  const double load_before = load_average();
  // Each iteration decodes a minute of video three times (~10 s here): at most 5 are timed.
  const int iters = std::min(options.iters, 5), warmup = std::min(options.warmup, 1);
  for (int i = 0; i < warmup; ++i) ours(), run_timed(cli), everything();
  Result r{"prep_decode", {}, {}};
  std::vector<double> cli_ms, all_ms;
  for (int i = 0; i < iters; ++i) {
    r.ms.push_back(ours());
    cli_ms.push_back(run_timed(cli));
    all_ms.push_back(everything());
  }
  BVLLM_REQUIRE(duration > 0, "prep_decode: the clip ", clip, " decoded to no duration");
  const double minutes = duration / 60.0;
  r.extra["ms_per_video_minute"] = median(r.ms) / minutes;
  r.extra["ffmpeg_ms_per_minute"] = median(cli_ms) / minutes;
  r.extra["decode_all_ms_per_minute"] = median(all_ms) / minutes;
  r.extra["speedup_vs_ffmpeg"] = median(cli_ms) / median(r.ms);
  r.extra["frames"] = static_cast<double>(frames);
  r.extra["decoded_frames"] = static_cast<double>(decoded);
  r.extra["decoded_frames_decode_all"] = static_cast<double>(decoded_all);
  r.extra["load_avg_before"] = load_before;
  r.extra["load_avg_after"] = load_average();
  return r;
}

// --- loader -----------------------------------------------------------------------------------

// The real tokenizers when the test fixtures have fetched them (BVLLM_QWEN_TOKENIZER, or
// <build>/qwen_tokenizer/tokenizer.json and <build>/bert_vocab/vocab.txt beside this binary's
// bin/), else a byte-level stand-in and a ten-word BERT vocabulary: text costs little next to
// the frames either way, and "real_tokenizers" says which ran.
std::pair<Qwen2Tokenizer, BertTokenizer> loader_tokenizers(bool& real) {
  const fs::path build = fs::read_symlink("/proc/self/exe").parent_path().parent_path();
  const char* env = std::getenv("BVLLM_QWEN_TOKENIZER");
  const fs::path qwen = env != nullptr && *env != '\0' ? fs::path(env) : build / "qwen_tokenizer" / "tokenizer.json";
  const fs::path bert = build / "bert_vocab" / "vocab.txt";
  real = fs::exists(qwen) && fs::exists(bert);
  if (real) return {Qwen2Tokenizer::load(qwen.string()), BertTokenizer::from_vocab_file(bert.string())};
  std::string vocab;
  for (int c = '!'; c <= '~'; ++c) {
    const std::string token = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : std::string(1, static_cast<char>(c));
    vocab += "\"" + token + "\": " + std::to_string(c - '!') + ", ";
  }
  vocab += "\"\\u0120\": 94, \"\\u010a\": 95";
  const auto added = [](int id, const std::string& content) {
    return "{\"id\": " + std::to_string(id) + ", \"content\": \"" + content +
           "\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": "
           "true}";
  };
  const std::string byte_level =
      R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})";
  const std::string json =
      R"({"added_tokens": [)" + added(96, "<|endoftext|>") + ", " + added(97, "<|im_start|>") + ", " +
      added(98, "<|im_end|>") +
      R"(], "normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false}, )" +
      byte_level + R"(]}, "decoder": )" + byte_level + R"(, "model": {"type": "BPE", "vocab": {)" + vocab +
      R"(}, "merges": []}})";
  return {
      Qwen2Tokenizer::from_json(json, "byte-level stand-in"),
      BertTokenizer::from_tokens({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "man", "doing"},
                                 "ten-word stand-in")};
}

// One synthetic 16:9 frame at 336 px short side, stored as prep stores it (JPEG q90): a moving
// gradient with pixel noise, ~70 KB, at the costly end of real frames (q90 at this size scales
// data-pipeline.md §2.4's 21-57 KB at 384x384 to 29-78 KB) rather than a flat test pattern.
std::string loader_frame(int k) {
  constexpr int64_t h = 336, w = 597;
  Tensor rgb = Tensor::empty({h, w, 3}, DType::U8);
  uint8_t* p = rgb.data<uint8_t>();
  uint32_t noise = 12345u + static_cast<uint32_t>(k);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        noise = noise * 1664525u + 1013904223u;
        const int v = static_cast<int>((x + 4 * k) * (c + 1) / 3 + y / 2) % 200 + static_cast<int>(noise >> 27);
        p[(y * w + x) * 3 + c] = static_cast<uint8_t>(std::min(v, 255));
      }
  return data::encode_jpeg(rgb, 90);
}

// The training loader as stage 2 runs it: 32 frames per video picked from 60 stored 1-fps frames
// (a one-minute clip), expand2square + CLIP to 336, ChatML with label masking, BERT question; one
// iteration = one batch of 4 with all cores prefetching. Also the cost of one sample on one thread,
// with and without the pad.
Result loader_case(const Options& options) {
  constexpr int kSamples = 24, kStored = 60, kBatch = 4;
  const fs::path dir = fs::temp_directory_path() / ("bvllm_bench_loader_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  int64_t stored_bytes = 0;
  {
    std::vector<std::string> frames;
    for (int k = 0; k < kStored; ++k) frames.push_back(loader_frame(k));
    data::ShardWriter writer(dir.string());
    for (int i = 0; i < kSamples; ++i) {
      data::Sample s;
      s.set_id("clip" + std::to_string(i));
      s.set_kind(data::Sample::VIDEO);
      for (int k = 0; k < kStored; ++k) {
        s.add_frames(frames[(k + i) % kStored]);
        s.add_timestamps(k);
        stored_bytes += static_cast<int64_t>(frames[(k + i) % kStored].size());
      }
      s.set_width(597);
      s.set_height(336);
      auto* q = s.add_conversations();
      q->set_from("human");
      q->set_value("<video>\nWhat is the man doing in this video? Describe it in detail.");
      auto* a = s.add_conversations();
      a->set_from("gpt");
      a->set_value("The man walks along a beach at sunset, stops to pick up a shell, and shows it to the camera.");
      writer.add(s);
    }
    writer.finish();
  }
  bool real = false;
  const auto [qwen, bert] = loader_tokenizers(real);
  data::LoaderOptions lo = data::LoaderOptions::for_stage(2);
  lo.shards = dir.string();
  lo.batch_size = kBatch;
  lo.prefetch_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  lo.prefetch_batches = 2;
  Result r{"loader", {}, {}};
  const double load_before = load_average();
  {
    data::DataLoader loader(lo, qwen, bert);
    r.ms = time_ms(options, [&] { loader.next_batch(); });
  }
  r.extra["samples_per_s"] = kBatch / (median(r.ms) / 1000.0);
  r.extra["frames_per_sample"] = static_cast<double>(lo.frames);
  r.extra["batch"] = kBatch;
  r.extra["prefetch_threads"] = lo.prefetch_threads;
  r.extra["stored_kb_per_frame"] = static_cast<double>(stored_bytes) / (kSamples * kStored) / 1024.0;
  r.extra["real_tokenizers"] = real ? 1 : 0;
  r.extra["load_avg_before"] = load_before;
  r.extra["load_avg_after"] = load_average();
  for (const bool pad : {true, false}) {
    lo.prefetch_threads = 0;
    lo.pad_to_square = pad;
    const data::DataLoader one(lo, qwen, bert);
    int64_t index = 0;
    const Options few{.warmup = 1, .iters = std::max(3, options.iters / 2)};
    r.extra[pad ? "one_thread_ms_per_sample" : "one_thread_ms_per_sample_no_pad"] =
        median(time_ms(few, [&] { one.load(index++ % kSamples); }));
  }
  fs::remove_all(dir);
  return r;
}

}  // namespace

const std::vector<Case>& data_cases() {
  static const std::vector<Case> all = {
      {"prep_decode",
       "1-fps frames of a 60-s 720p30 H.264 clip resized to 336 short side (decode_video, all cores) vs the "
       "ffmpeg CLI's fps=1,scale; needs ffmpeg; at most 5 iterations",
       prep_decode},
      {"loader",
       "training loader, stage 2: 32 of 60 stored 1-fps JPEG frames (336x597) per sample, expand2square + CLIP 336, "
       "ChatML + BERT text; batches of 4 with a prefetch thread per core; also one sample on one thread",
       loader_case},
  };
  return all;
}

}  // namespace bvllm::bench
