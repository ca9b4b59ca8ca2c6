// The training loader: every data-parallel rank reads its own deterministic share of the LMDB
// shards (data/shard.h) and gets samples ready for the model (layers/bvllm.h's BvllmSample):
// LLM ids and labels for the stage (data/conversation.h), the Q-Former question as BERT ids,
// and CLIP-normalized frames sampled uniformly from the stored 1-fps JPEG frames.
//
// Order. Epoch e visits the samples in the permutation epoch_permutation(N, seed, e): Fisher-Yates
// driven by std::mt19937_64 with our own bounded draw, so the order is the same on every platform
// and standard library (std::shuffle and uniform_int_distribution are implementation-defined). The
// last N % world positions of the permutation are dropped so every rank gets N / world samples
// (different samples each epoch, since the permutation changes); rank r takes positions
// r, r + world, r + 2 world, ... (Caffe's round robin, data-pipeline.md §2.1). Batches are
// consecutive samples of a rank's stream, which runs on from one epoch into the next, so every
// batch has batch_size samples and a batch may straddle two epochs.
//
// Frames. B-VLLM trains on N frames per video (16 in stage 1, 32 in stage 2) chosen by
// VideoLLaMA2's uniform rule (bvlm/mm_utils.py frame_sample; research/bvllm.md §2.1), here over
// the stored 1-fps frames instead of every decoded frame: see uniform_frame_indices. Each chosen
// JPEG frame is decoded (data/jpeg.h) and goes through clip_preprocess (data/clip_image.h); with
// pad_to_square, LLaVA's expand2square comes first, for images and video frames alike, as the
// reference's process_video / process_image do with --image_aspect_ratio pad (stage 2).
//
// Resume. The position is (epoch, offset in this rank's share); nothing else is random, so
// restore() of a saved state gives exactly the batches an uninterrupted run would have given.
// Prefetch threads load samples ahead; results are handed out in stream order, so the thread
// count never changes what next_batch() returns.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "data/bert_tokenizer.h"
#include "data/qwen2_tokenizer.h"
#include "data/shard.h"
#include "runtime/tensor.h"

namespace bvllm::data {

struct LoaderOptions {
  std::string shards;       // a directory with index.json (data/shard.h)
  int rank = 0, world = 1;  // data-parallel rank and size
  uint64_t seed = 42;
  int64_t batch_size = 1;     // samples per batch on this rank
  int stage = 2;              // 1: plain text, only the placeholder masked; 2: ChatML, answers supervised
  int64_t frames = 32;        // frames per video, uniform over the stored 1-fps frames (16 in stage 1)
  int image_size = 336;       // CLIP resize and crop side
  bool pad_to_square = true;  // expand2square before CLIP, images and video frames (stage 2)
  int prefetch_threads = 2;   // 0: load in next_batch() on the calling thread
  // How far the threads may run ahead, in batches. Memory: a 32-frame sample at 336 px holds
  // 32 * 3 * 336^2 f32 = 43 MB of pixels, so batch_size * prefetch_batches of them are in flight.
  int64_t prefetch_batches = 4;
  int64_t max_length = 8192;  // text ids cut to this before the visual tokens are spliced in

  // The released recipes: stage 1 16 frames, no pad; stage 2 32 frames, pad (research/bvllm.md §5).
  static LoaderOptions for_stage(int stage);
  // Throws bvllm::Error naming the field for a value out of range.
  void validate() const;
};

// One sample ready for the model (the trainer moves these fields into a layers::BvllmSample).
struct LoadedSample {
  std::string id;
  int64_t index = -1;          // ShardReader::get's global index
  Tensor ids, labels;          // i64 [L], one -201 (video) or -200 (image) placeholder, labels -100 where masked
  Tensor pixels;               // f32 [T, 3, S, S] (T = options.frames for a video, 1 for an image); undefined for text
  Tensor bert_ids, bert_mask;  // i64 [Lb]: [CLS] question [SEP] (BertTokenizer), mask all ones
};

// Where a rank's stream stands. seed, world and samples are not position: restore() checks them
// against the loader's, since the same (epoch, offset) means other samples under other values.
struct LoaderState {
  int64_t epoch = 0;
  int64_t offset = 0;  // samples this rank has taken from its share of `epoch`
  uint64_t seed = 0;
  int world = 1;
  int64_t samples = 0;  // in the shards

  std::string to_json() const;  // {"epoch":..,"offset":..,"seed":..,"world":..,"samples":..}
  // Throws bvllm::Error naming `source` and the field for anything missing or malformed.
  static LoaderState from_json(std::string_view text, const std::string& source);
  bool operator==(const LoaderState&) const = default;
};

// The order of epoch `epoch`: a permutation of [0, samples) that depends only on (seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t samples, uint64_t seed, int64_t epoch);

// VideoLLaMA2's frame_sample(duration, 'uniform', num_frames): seg = (available - 1) / count,
// index i = round((seg i + seg (i + 1)) / 2 + 1e-6), numpy's round half to even, in doubles as
// Python computes them. Fewer frames than `count` repeat frames; the reference's black-frame
// padding is only reached when the reader returns fewer frames than asked, which never happens
// here. Throws bvllm::Error when available < 1 or count < 1.
std::vector<int64_t> uniform_frame_indices(int64_t available, int64_t count);

// A rank's stream of sample indices: step s = epoch * per_epoch() + offset. Thread-safe; keeps the
// rank's share of the last two epochs it was asked about.
class RankSampler {
 public:
  RankSampler(int64_t samples, int rank, int world, uint64_t seed);
  int64_t per_epoch() const { return per_epoch_; }  // samples / world
  int64_t at(int64_t step) const;                   // the global sample index
  std::vector<int64_t> share(int64_t epoch) const;  // every index of this rank in `epoch`, in order

 private:
  std::shared_ptr<const std::vector<int64_t>> epoch_share(int64_t epoch) const;
  int64_t samples_, per_epoch_;
  int rank_, world_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> cache_;
};

class DataLoader {
 public:
  // Opens the shards read-only (after fork / MPI_Init: LMDB environments must not cross a fork).
  // The tokenizers are copied (they share their immutable tables). Threads start on the first
  // next_batch(). Throws bvllm::Error for invalid options, a missing or empty shard directory, or
  // fewer samples than ranks.
  DataLoader(LoaderOptions options, const Qwen2Tokenizer& qwen, const BertTokenizer& bert);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch_size samples of this rank's stream. A sample that cannot be loaded (bad
  // conversation, undecodable frame) throws bvllm::Error naming the shard directory, the index and
  // the id; the stream is then just past that sample (the samples of the batch taken before it
  // are dropped), so a caller may log the error and go on.
  std::vector<LoadedSample> next_batch();

  LoaderState state() const;
  // Continues from `state` (from state() of a loader with the same seed, world and shards).
  void restore(const LoaderState& state);

  int64_t samples_per_epoch() const { return sampler_.per_epoch(); }  // this rank's share
  const LoaderOptions& options() const { return options_; }
  const ShardReader& reader() const { return reader_; }

  // Sample `index` of the shards as next_batch() would give it (for tools and tests).
  LoadedSample load(int64_t index) const;

 private:
  void start();
  void stop();
  void work();

  LoaderOptions options_;
  Qwen2Tokenizer qwen_;
  BertTokenizer bert_;
  ShardReader reader_;
  RankSampler sampler_;
  int64_t step_ = 0;  // the next step next_batch() hands out

  // Prefetch: workers claim steps in order, up to `capacity` ahead of step_, and leave results
  // keyed by step; next_batch() takes them in order.
  struct Loaded {
    LoadedSample sample;
    std::exception_ptr error;
  };
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  int64_t claimed_ = 0;
  bool stopping_ = false;
  std::map<int64_t, Loaded> results_;
  std::vector<std::thread> workers_;
};

}  // namespace bvllm::data
