// bvllm_prep: a dataset manifest and its media into LMDB shards of 1-fps JPEG frames (the only
// thing training reads), and `bvllm_prep inspect` to look inside the shards.
//
//   build/bin/bvllm_prep --manifest=train.json --media_root=/data/videos --out=/data/shards
//   build/bin/bvllm_prep inspect /data/shards
//   build/bin/bvllm_prep inspect /data/shards --dump_frames=v_123 --dump_dir=/tmp/v_123
//
// What it does, per manifest record (data/manifest.h has the format): a video is decoded at
// --fps frames per second chosen by timestamp (data/video_decoder.h), an image as one frame; the
// frames are resized so their short side is --frame_size and stored as JPEG (--jpeg_quality), with
// their timestamps, the stream's fps and duration and the conversations, as one Sample record
// (data/sample.proto) in LMDB shards of at most --max_shard_bytes (data/shard.h). --workers
// threads decode; one thread writes. Shards are written in the order samples finish, not
// manifest order (the loader shuffles anyway).
//
// Failures of one sample are not fatal: the sample goes to OUT/rejects.jsonl, one JSON object per
// line, {"id", "source", "line", "reason", "detail"}, reason one of "missing file", "no video
// stream", "undecodable", "zero frames" (from the decoder), "duplicate id" (a later record with
// an id seen before; the first one is kept), "error" (anything else, e.g. out of memory). The exit
// status is non-zero only for fatal errors (a bad manifest, flags, an unwritable output).
//
// Resume: run the same command again. Samples whose id is already in a shard listed in
// OUT/index.json are skipped; the rest are prepared. A run that was killed leaves its current
// shard unlisted; the next run of the same part adopts it with every record it committed (records
// are committed in batches of --batch, so at most one batch is decoded again) and lists it (the
// adoption rule of data/shard.h). In the end every sample of the manifest is in the shards exactly
// once, or in rejects.jsonl. Every run retries the samples rejected before (e.g. after the media
// were fixed) and rewrites its rejects file, so that file lists the rejects of the last run.
//
// Many processes or hosts: --part=K --parts=N prepares the records whose 0-based manifest index i
// has i % N == K, into shards named shard-pKofN-NNNNN and rejects-pKofN.jsonl, all in the same OUT
// (index.json is shared under a file lock: OUT must be on a filesystem with working flock). Without
// the flags, a Slurm array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT),
// then an MPI launch (OMPI_COMM_WORLD_RANK/SIZE, or PMI_RANK/PMI_SIZE) sets them. Resume with the
// same N: a run refuses to start while OUT holds unfinished shards of another N.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "data/jpeg.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "data/video_decoder.h"
#include "runtime/error.h"

DEFINE_string(manifest, "", "the dataset: a JSON array or JSONL of {id, video|image, conversations} records");
DEFINE_string(media_root, "", "directory that the manifest's video/image paths are relative to");
DEFINE_string(out, "", "output directory for the shards, index.json and rejects.jsonl (created if missing)");
DEFINE_int32(workers, 0, "decoding threads (0: one per hardware thread)");
DEFINE_int32(decode_threads, 1, "FFmpeg threads per worker (raise it when there are few, long videos)");
DEFINE_double(fps, 1.0, "video frames stored per second of video, chosen by timestamp");
DEFINE_int64(frame_size, 336, "resize frames so that their short side is this many pixels (0: keep the size)");
DEFINE_int64(max_frames, 10200, "at most this many frames per video (more are subsampled uniformly)");
DEFINE_int32(jpeg_quality, 90, "JPEG quality of the stored frames (1-100)");
DEFINE_int64(max_shard_bytes, int64_t{1} << 30, "start a new shard before one would exceed this size");
DEFINE_int32(batch, 128, "samples per LMDB write transaction (what a killed run may have to redo)");
DEFINE_int32(part, -1, "with --parts: prepare the records with index % parts == part");
DEFINE_int32(parts, 0, "number of processes sharing the work (0: from Slurm/MPI variables, else 1)");
DEFINE_double(progress_seconds, 0, "seconds between progress lines (0: 1 on a terminal, 30 otherwise)");
DEFINE_int64(debug_stop_after, 0, "testing: kill the process (SIGKILL) after handing this many samples to the writer");
DEFINE_string(dump_frames, "", "inspect: write the frames of the sample with this id as JPEG files");
DEFINE_string(dump_dir, "", "inspect: directory for --dump_frames (created if missing)");
DEFINE_int64(limit, 0, "inspect: list at most this many samples (0: all)");

namespace {

namespace fs = std::filesystem;
using bvllm::Error;
using bvllm::str_cat;
using bvllm::data::ManifestEntry;
using bvllm::data::Sample;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    R"(turns a dataset manifest and its media into LMDB shards of 1-fps JPEG frames.

  bvllm_prep --manifest=FILE --media_root=DIR --out=DIR [--workers=N] [--frame_size=336] [--fps=1]
             [--jpeg_quality=90] [--max_shard_bytes=BYTES] [--part=K --parts=N]
  bvllm_prep inspect DIR [--limit=N] [--dump_frames=ID --dump_dir=DIR]

The manifest is a JSON array or JSONL of LLaVA/VideoLLaMA2 records:
  {"id": "v1", "video": "clips/v1.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                                          {"from": "gpt", "value": "A dog runs."}]}
("image" instead of "video" for an image, neither for text). Each record becomes one sample in
OUT/shard-NNNNN (LMDB files) listed in OUT/index.json. A sample that cannot be read (missing file,
no video stream, undecodable, zero frames, duplicate id) goes to OUT/rejects.jsonl with the reason,
and the run goes on; the exit status is non-zero only when the run itself fails.

Resume: run the same command again. Samples already in a shard are skipped; a killed run's
unfinished shard keeps every committed batch (--batch samples each). Each sample ends up in the
shards exactly once. Rejected samples are retried on every run.

Several processes: --part=K --parts=N (or a Slurm array / MPI launch, detected from the
environment) split the manifest by record index; all write into the same OUT.

`inspect DIR` lists the shards and, per sample: id, kind, frames, frame size, fps, duration and the
first turn; --dump_frames=ID writes that sample's frames as DIR/NNNNN.jpg.)";

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof(text), "%lldh%02lldm%02llds", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else if (s >= 60)
    std::snprintf(text, sizeof(text), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else
    std::snprintf(text, sizeof(text), "%llds", static_cast<long long>(s));
  return text;
}

// "1 shard", "2 shards".
std::string count(int64_t n, const char* noun) { return str_cat(n, " ", noun, n == 1 ? "" : "s"); }

std::string format_bytes(double bytes) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1);
  if (bytes >= double(1 << 30))
    out << bytes / double(1 << 30) << " GiB";
  else if (bytes >= double(1 << 20))
    out << bytes / double(1 << 20) << " MiB";
  else
    out << bytes / 1024.0 << " KiB";
  return out.str();
}

// --- which part of the manifest this process prepares ---------------------------------------------

struct Partition {
  int part = 0;
  int parts = 1;
  std::string source = "a single process";
};

std::optional<int> env_int(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  int n = 0;
  const char* end = value + std::strlen(value);
  const auto [ptr, ec] = std::from_chars(value, end, n);
  BVLLM_REQUIRE(ec == std::errc() && ptr == end, "environment variable ", name, "='", value, "' is not an integer");
  return n;
}

Partition partition() {
  Partition p;
  if (FLAGS_parts > 0) {
    BVLLM_REQUIRE(FLAGS_part >= 0 && FLAGS_part < FLAGS_parts, "--part must be in [0, ", FLAGS_parts, "), got ",
                  FLAGS_part);
    return {FLAGS_part, FLAGS_parts, "--part/--parts"};
  }
  BVLLM_REQUIRE(FLAGS_part < 0, "--part needs --parts");
  if (auto count = env_int("SLURM_ARRAY_TASK_COUNT"), id = env_int("SLURM_ARRAY_TASK_ID"); count && id) {
    const int k = *id - env_int("SLURM_ARRAY_TASK_MIN").value_or(0);
    BVLLM_REQUIRE(*count > 0 && k >= 0 && k < *count, "the Slurm array task ", *id, " of ", *count,
                  " does not map to a part in [0, ", *count, "): use a contiguous array without a step (--array=0-",
                  *count - 1, "), or pass --part/--parts");
    return {k, *count, "the Slurm array (SLURM_ARRAY_TASK_ID)"};
  }
  for (const auto& [rank_name, size_name] :
       {std::pair{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, std::pair{"PMI_RANK", "PMI_SIZE"}}) {
    if (auto size = env_int(size_name), rank = env_int(rank_name); size && rank) {
      BVLLM_REQUIRE(*size > 0 && *rank >= 0 && *rank < *size, rank_name, "=", *rank, " is not in [0, ", size_name, "=",
                    *size, ")");
      return {*rank, *size, str_cat("the MPI launch (", rank_name, ")")};
    }
  }
  return p;
}

std::string shard_prefix(const Partition& p) {
  return p.parts == 1 ? "shard" : str_cat("shard-p", p.part, "of", p.parts);
}
std::string rejects_name(const Partition& p) {
  return p.parts == 1 ? "rejects.jsonl" : str_cat("rejects-p", p.part, "of", p.parts, ".jsonl");
}

// A killed run of another --parts leaves shards that only that partitioning adopts; starting a
// different one would write their samples again next to them.
void check_foreign_unfinished(const std::string& out, const Partition& mine) {
  if (!fs::is_directory(out)) return;
  std::set<std::string> listed;
  if (bvllm::data::has_index(out))
    for (const auto& info : bvllm::data::read_index(out).shards) listed.insert(info.file);
  static const std::regex kName(R"(shard(-p(\d+)of(\d+))?-\d{5})");
  for (const fs::directory_entry& entry : fs::directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, kName) || listed.count(name) != 0) continue;
    const int parts = m[1].matched ? std::stoi(m[3].str()) : 1;
    BVLLM_REQUIRE(parts == mine.parts, (fs::path(out) / name).string(),
                  " is an unfinished shard of a run with --parts=", parts,
                  "; finish that run (the same command with --parts=", parts,
                  ") or delete the file (its samples are then prepared again)");
  }
}

// --- one sample -----------------------------------------------------------------------------------

struct Result {
  const ManifestEntry* entry = nullptr;
  std::optional<Sample> sample;
  std::string reason, detail;  // when rejected
};

Sample prepare(const ManifestEntry& entry) {
  Sample sample;
  sample.set_id(entry.id);
  sample.set_kind(entry.kind);
  sample.set_source(entry.media);
  for (const auto& turn : entry.turns) *sample.add_conversations() = turn;
  if (entry.kind == Sample::TEXT) return sample;

  const std::string path = (fs::path(FLAGS_media_root) / entry.media).string();
  const bvllm::data::DecodeOptions options{.fps = FLAGS_fps,
                                           .threads = FLAGS_decode_threads,
                                           .max_frames = FLAGS_max_frames,
                                           .short_side = FLAGS_frame_size};
  const bvllm::data::DecodedVideo video =
      entry.kind == Sample::VIDEO ? bvllm::data::decode_video(path, options) : bvllm::data::decode_image(path, options);
  if (video.frames.empty())
    throw bvllm::data::DecodeError(bvllm::data::DecodeError::Reason::ZeroFrames, str_cat(path, ": no frame decoded"));
  sample.set_fps(video.fps);
  sample.set_duration(video.duration);
  sample.set_sample_fps(entry.kind == Sample::VIDEO ? FLAGS_fps : 0);
  sample.set_height(static_cast<int32_t>(video.frames[0].rgb.size(0)));
  sample.set_width(static_cast<int32_t>(video.frames[0].rgb.size(1)));
  for (size_t i = 0; i < video.frames.size(); ++i) {
    const bvllm::Tensor& rgb = video.frames[i].rgb;
    sample.add_timestamps(video.frames[i].timestamp);
    // Targets inside a hole in time share one frame: encode it once.
    if (i > 0 && rgb.raw_data() == video.frames[i - 1].rgb.raw_data() && rgb.shape() == video.frames[i - 1].rgb.shape())
      sample.add_frames(sample.frames(static_cast<int>(i) - 1));
    else
      sample.add_frames(bvllm::data::encode_jpeg(rgb, FLAGS_jpeg_quality));
  }
  return sample;
}

Result prepare_or_reject(const ManifestEntry& entry) {
  Result result{&entry, std::nullopt, "", ""};
  try {
    result.sample = prepare(entry);
  } catch (const bvllm::data::DecodeError& e) {
    result.reason = std::string(e.reason_name());
    result.detail = e.what();
  } catch (const std::exception& e) {
    result.reason = "error";
    result.detail = e.what();
  }
  return result;
}

// Finished samples from the workers to the writer; bounded, so that fast workers wait for the
// writer instead of piling decoded videos up in memory.
class ResultQueue {
 public:
  explicit ResultQueue(size_t capacity) : capacity_(capacity) {}
  bool push(Result result) {
    std::unique_lock lock(mutex_);
    not_full_.wait(lock, [&] { return closed_ || queue_.size() < capacity_; });
    if (closed_) return false;
    queue_.push_back(std::move(result));
    not_empty_.notify_one();
    return true;
  }
  std::optional<Result> pop(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!not_empty_.wait_for(lock, timeout, [&] { return !queue_.empty(); })) return std::nullopt;
    Result result = std::move(queue_.front());
    queue_.pop_front();
    not_full_.notify_one();
    return result;
  }
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    not_full_.notify_all();
  }
  bool closed() {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 private:
  size_t capacity_;
  std::mutex mutex_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Result> queue_;
  bool closed_ = false;
};

// The worker threads; stopped and joined when it goes out of scope (also when the writer fails).
class Workers {
 public:
  Workers(int n, const std::vector<const ManifestEntry*>& todo, ResultQueue& queue) : queue_(queue) {
    for (int w = 0; w < n; ++w)
      threads_.emplace_back([this, &todo] {
        for (size_t i; (i = next_++) < todo.size() && !queue_.closed();)
          if (!queue_.push(prepare_or_reject(*todo[i]))) break;
      });
  }
  ~Workers() {
    queue_.close();
    threads_.clear();  // joins
  }

 private:
  ResultQueue& queue_;
  std::atomic<size_t> next_{0};
  std::vector<std::jthread> threads_;
};

// --- progress -------------------------------------------------------------------------------------

// Whether a terminal progress line ("\r...") is showing, so that an error starts on a new line.
bool progress_line_open = false;

class Progress {
 public:
  explicit Progress(int64_t total) : total_(total), start_(Clock::now()), last_(start_), tty_(::isatty(2) != 0) {
    interval_ = FLAGS_progress_seconds > 0 ? FLAGS_progress_seconds : (tty_ ? 1.0 : 30.0);
  }
  void update(int64_t done, int64_t written, int64_t rejected, bool force = false) {
    const auto now = Clock::now();
    if (!force && std::chrono::duration<double>(now - last_).count() < interval_) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? done / elapsed : 0;
    std::ostringstream line;
    line << "bvllm_prep: " << done << "/" << total_ << " (" << std::fixed << std::setprecision(1)
         << (total_ > 0 ? 100.0 * done / total_ : 100.0) << "%), " << std::setprecision(2) << rate << " samples/s, ETA "
         << (done > 0 ? format_duration((total_ - done) / rate) : std::string("?")) << "; " << written << " written, "
         << rejected << " rejected";
    if (tty_) {
      std::cerr << "\r" << line.str() << "\x1b[K" << std::flush;
      progress_line_open = true;
    } else {
      std::cerr << line.str() << "\n" << std::flush;
    }
  }
  // Ends the terminal's progress line before other output.
  void end_line() {
    if (progress_line_open) std::cerr << "\n";
    progress_line_open = false;
  }
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  int64_t total_;
  Clock::time_point start_, last_;
  bool tty_;
  double interval_ = 1;
};

// --- prep -----------------------------------------------------------------------------------------

void check_flags() {
  BVLLM_REQUIRE(!FLAGS_manifest.empty(), "--manifest is required (a JSON or JSONL dataset file)");
  BVLLM_REQUIRE(!FLAGS_out.empty(), "--out is required (the shard directory)");
  BVLLM_REQUIRE(FLAGS_workers >= 0, "--workers must be >= 0, got ", FLAGS_workers);
  BVLLM_REQUIRE(FLAGS_decode_threads >= 0, "--decode_threads must be >= 0, got ", FLAGS_decode_threads);
  BVLLM_REQUIRE(FLAGS_fps > 0, "--fps must be positive, got ", FLAGS_fps);
  BVLLM_REQUIRE(FLAGS_frame_size >= 0, "--frame_size must be >= 0, got ", FLAGS_frame_size);
  BVLLM_REQUIRE(FLAGS_max_frames > 0, "--max_frames must be positive, got ", FLAGS_max_frames);
  BVLLM_REQUIRE(FLAGS_jpeg_quality >= 1 && FLAGS_jpeg_quality <= 100, "--jpeg_quality must be in [1, 100], got ",
                FLAGS_jpeg_quality);
  BVLLM_REQUIRE(FLAGS_max_shard_bytes > 0, "--max_shard_bytes must be positive, got ", FLAGS_max_shard_bytes);
  BVLLM_REQUIRE(FLAGS_batch > 0, "--batch must be positive, got ", FLAGS_batch);
}

int prep(int argc, char** argv) {
  BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "' (see --help)");
  check_flags();
  const Partition part = partition();
  const std::vector<ManifestEntry> entries = bvllm::data::read_manifest(FLAGS_manifest);

  // This part's records; a later record with an id seen before is rejected (ids key the resume).
  std::unordered_map<std::string, const ManifestEntry*> first_of;
  std::vector<const ManifestEntry*> mine;
  std::vector<Result> duplicates;
  int64_t counts[3] = {0, 0, 0};
  for (const ManifestEntry& entry : entries) {
    const auto [it, fresh] = first_of.emplace(entry.id, &entry);
    if (entry.index % part.parts != part.part) continue;
    if (!fresh) {
      duplicates.push_back({&entry, std::nullopt, "duplicate id",
                            str_cat("record ", entry.index, " (line ", entry.line, ") repeats the id of record ",
                                    it->second->index, " (line ", it->second->line, "), which is kept")});
      continue;
    }
    mine.push_back(&entry);
    ++counts[entry.kind];
  }
  const bool needs_media = std::any_of(mine.begin(), mine.end(), [](const ManifestEntry* e) {
    return e->kind != Sample::TEXT && fs::path(e->media).is_relative();
  });
  if (needs_media) {
    BVLLM_REQUIRE(!FLAGS_media_root.empty(), "--media_root is required: ", FLAGS_manifest,
                  " has video/image records with relative paths");
    BVLLM_REQUIRE(fs::is_directory(FLAGS_media_root), "--media_root ", FLAGS_media_root, " is not a directory");
  }

  check_foreign_unfinished(FLAGS_out, part);
  bvllm::data::ShardWriter writer(
      FLAGS_out, {.max_shard_bytes = FLAGS_max_shard_bytes, .batch = FLAGS_batch, .prefix = shard_prefix(part)});
  std::unordered_set<std::string> done;
  if (bvllm::data::has_index(FLAGS_out))
    for (std::string& id : bvllm::data::ShardReader(FLAGS_out).ids()) done.insert(std::move(id));
  std::vector<const ManifestEntry*> todo;
  for (const ManifestEntry* entry : mine)
    if (done.count(entry->id) == 0) todo.push_back(entry);
  const int64_t skipped = static_cast<int64_t>(mine.size() - todo.size());

  const std::string rejects_path = (fs::path(FLAGS_out) / rejects_name(part)).string();
  std::ofstream rejects(rejects_path, std::ios::trunc);
  BVLLM_REQUIRE(rejects, rejects_path, ": cannot create");
  int64_t rejected = 0;
  auto reject = [&](const Result& r) {
    const nlohmann::json line = {{"id", r.entry->id},
                                 {"source", r.entry->media},
                                 {"line", r.entry->line},
                                 {"reason", r.reason},
                                 {"detail", r.detail}};
    rejects << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
    BVLLM_REQUIRE(rejects, rejects_path, ": write failed");
    ++rejected;
  };
  for (const Result& r : duplicates) reject(r);

  const int workers =
      FLAGS_workers > 0 ? FLAGS_workers : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::cerr << "bvllm_prep: " << FLAGS_manifest << ": " << entries.size() << " records; "
            << (part.parts > 1 ? str_cat("part ", part.part, " of ", part.parts, " (from ", part.source, "): ") : "")
            << mine.size() << " samples (" << counts[Sample::VIDEO] << " video, " << counts[Sample::IMAGE] << " image, "
            << counts[Sample::TEXT] << " text), " << skipped << " already in " << FLAGS_out;
  if (!writer.adopted().empty()) {
    int64_t adopted = 0;
    for (const auto& info : writer.adopted()) adopted += info.samples;
    std::cerr << " (" << adopted << " kept from an unfinished run)";
  }
  std::cerr << "; " << todo.size() << " to prepare with " << count(workers, "worker") << "\n";

  bvllm::data::quiet_ffmpeg_log();
  Progress progress(static_cast<int64_t>(todo.size()));
  int64_t written = 0, frames = 0, bytes = 0, received = 0;
  {
    ResultQueue queue(static_cast<size_t>(workers));
    Workers pool(workers, todo, queue);
    while (received < static_cast<int64_t>(todo.size())) {
      std::optional<Result> result = queue.pop(std::chrono::milliseconds(200));
      if (result) {
        ++received;
        if (result->sample) {
          writer.add(*result->sample);
          ++written;
          frames += result->sample->frames_size();
          bytes += static_cast<int64_t>(result->sample->ByteSizeLong());
          if (FLAGS_debug_stop_after > 0 && written == FLAGS_debug_stop_after) {
            progress.end_line();
            std::cerr << "bvllm_prep: --debug_stop_after=" << written << ": killing myself" << std::endl;
            std::raise(SIGKILL);
          }
        } else {
          reject(*result);
        }
      }
      progress.update(received, written, rejected);
    }
  }
  writer.finish();
  progress.update(received, written, rejected, /*force=*/true);
  progress.end_line();

  const bvllm::data::ShardIndex index = bvllm::data::read_index(FLAGS_out);
  std::cerr << "bvllm_prep: done in " << format_duration(progress.elapsed()) << ": " << written << " written ("
            << frames << " frames, " << format_bytes(static_cast<double>(bytes)) << "), " << skipped
            << " skipped (already in " << FLAGS_out << "), " << rejected << " rejected";
  if (rejected > 0) std::cerr << " (see " << rejects_path << ")";
  std::cerr << ". " << FLAGS_out << " holds " << count(index.samples(), "sample") << " in "
            << count(static_cast<int64_t>(index.shards.size()), "shard") << ".\n";
  return 0;
}

// --- inspect --------------------------------------------------------------------------------------

const char* kind_name(Sample::Kind kind) {
  switch (kind) {
    case Sample::VIDEO: return "video";
    case Sample::IMAGE: return "image";
    default: return "text";
  }
}

// The text on one line: newlines and tabs escaped, cut after `max` bytes (at a UTF-8 boundary).
std::string one_line(const std::string& text, size_t max) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max && (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) return out + "...";
    if (text[i] == '\n')
      out += "\\n";
    else if (text[i] == '\t')
      out += "\\t";
    else
      out += text[i];
  }
  return out;
}

int inspect(int argc, char** argv) {
  BVLLM_REQUIRE(argc == 3, "usage: bvllm_prep inspect DIR [--limit=N] [--dump_frames=ID --dump_dir=DIR]");
  const std::string dir = argv[2];
  const bvllm::data::ShardReader reader(dir);

  if (!FLAGS_dump_frames.empty()) {
    BVLLM_REQUIRE(!FLAGS_dump_dir.empty(), "--dump_frames needs --dump_dir");
    const std::vector<std::string> ids = reader.ids();
    const auto it = std::find(ids.begin(), ids.end(), FLAGS_dump_frames);
    BVLLM_REQUIRE(it != ids.end(), dir, ": no sample with id \"", FLAGS_dump_frames, "\"");
    const Sample sample = reader.get(it - ids.begin());
    std::error_code error;
    fs::create_directories(FLAGS_dump_dir, error);
    BVLLM_REQUIRE(fs::is_directory(FLAGS_dump_dir), FLAGS_dump_dir, ": cannot create: ", error.message());
    for (int i = 0; i < sample.frames_size(); ++i) {
      char name[32];
      std::snprintf(name, sizeof(name), "%05d.jpg", i);
      const std::string path = (fs::path(FLAGS_dump_dir) / name).string();
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << sample.frames(i);
      BVLLM_REQUIRE(out.flush(), path, ": write failed");
      std::cout << path << "\t" << std::fixed << std::setprecision(3) << sample.timestamps(i) << " s\n";
    }
    std::cout << "bvllm_prep inspect: wrote " << sample.frames_size() << " frames of \"" << sample.id() << "\" to "
              << FLAGS_dump_dir << "\n";
    return 0;
  }

  const bvllm::data::ShardIndex& index = reader.index();
  int64_t bytes = 0;
  for (const auto& info : index.shards) bytes += info.bytes;
  std::cout << dir << ": " << count(index.samples(), "sample") << " in "
            << count(static_cast<int64_t>(index.shards.size()), "shard") << ", "
            << format_bytes(static_cast<double>(bytes)) << "\n";
  for (const auto& info : index.shards)
    std::cout << "  " << info.file << "\t" << count(info.samples, "sample") << "\t"
              << format_bytes(static_cast<double>(info.bytes)) << "\n";
  std::cout << "index\tid\tkind\tframes\tsize\tfps\tduration\tfirst turn\n";
  const int64_t n = FLAGS_limit > 0 ? std::min(FLAGS_limit, reader.size()) : reader.size();
  for (int64_t i = 0; i < n; ++i) {
    const Sample sample = reader.get(i);
    std::ostringstream line;
    line << i << "\t" << sample.id() << "\t" << kind_name(sample.kind()) << "\t" << sample.frames_size() << "\t"
         << (sample.kind() == Sample::TEXT ? std::string("-") : str_cat(sample.width(), "x", sample.height())) << "\t"
         << std::fixed << std::setprecision(3) << sample.fps() << "\t" << sample.duration() << " s\t";
    if (sample.conversations_size() > 0)
      line << sample.conversations(0).from() << ": " << one_line(sample.conversations(0).value(), 80);
    std::cout << line.str() << "\n";
  }
  if (n < reader.size()) std::cout << "... (" << reader.size() - n << " more)\n";
  return 0;
}

// --help: the usage text and this program's flags only (gflags' own --help lists every library's).
void print_help() {
  std::cout << "bvllm_prep " << kUsage << "\n\nFlags:\n";
  std::vector<gflags::CommandLineFlagInfo> flags;
  gflags::GetAllFlags(&flags);
  for (const auto& flag : flags) {
    if (flag.filename.find("bvllm_prep") == std::string::npos) continue;
    std::string name = "  --" + flag.name + "=";
    name += flag.type == "string" ? "\"" + flag.default_value + "\"" : flag.default_value;
    name.resize(std::max<size_t>(name.size() + 2, 34), ' ');
    std::cout << name << flag.description << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort") {
      print_help();
      return 0;
    }
  }
  gflags::SetUsageMessage(kUsage);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  try {
    if (argc >= 2 && std::string(argv[1]) == "inspect") return inspect(argc, argv);
    return prep(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << (progress_line_open ? "\n" : "") << "bvllm_prep: " << e.what() << "\n";
    return 1;
  }
}
