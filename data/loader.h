// The training loader: every data-parallel rank reads its own deterministic share of the LMDB
// shards (data/shard.h) and gets samples ready for the model (layers/bvllm.h's BvllmSample):
// LLM ids and labels for the stage (data/conversation.h), the Q-Former question as BERT ids,
// and CLIP-normalized frames sampled uniformly from the stored 1-fps JPEG frames.
//
// Order. The global stream is every epoch's permutation epoch_permutation(N, seed, e) one after
// the other, nothing dropped: global position p is sample epoch_permutation(N, seed, p / N)[p % N].
// The permutation is Fisher-Yates driven by std::mt19937_64 with our own bounded draw, so the order
// is the same on every platform and standard library (std::shuffle and uniform_int_distribution
// are implementation-defined). The stream is cut into global batches of batch_size consecutive
// positions (global batch g is positions [g B, (g + 1) B); one may straddle two epochs), and rank r
// of world w takes global batches r, r + w, r + 2 w, ...: its k-th batch is global batch k w + r.
// So the k-th batches of ranks 0 .. w-1, in rank order, are the batches k w .. k w + w - 1 that one
// process with the same batch_size takes: dp ranks with grad_accum a see exactly the micro-batches
// of one process with grad_accum dp a, and the position is a count of global batches, which a run
// on another dp can take up (Megatron's consumed_samples sampler does the same with samples,
// research/distributed.md §1, "Data loader determinism / resume"). A global batch here is one
// batch of the stream, a rank's micro-batch, not the trainer's batch of an optimizer step.
//
// Frames. B-VLLM trains on N frames per video (16 in stage 1, 32 in stage 2) chosen by
// VideoLLaMA2's uniform rule (bvlm/mm_utils.py frame_sample; research/bvllm.md §2.1), here over
// the stored 1-fps frames instead of every decoded frame: see uniform_frame_indices. Each chosen
// JPEG frame is decoded (data/jpeg.h) and goes through clip_preprocess (data/clip_image.h); with
// pad_to_square, LLaVA's expand2square comes first, for images and video frames alike, as the
// reference's process_video / process_image do with --image_aspect_ratio pad (stage 2).
//
// Resume. The position is the number of batches this rank has taken; nothing else is random, so
// restore() of a saved state gives exactly the batches an uninterrupted run would have given, on
// the same world or on another one that splits the global batches consumed evenly. Prefetch
// threads load samples ahead; results are handed out in stream order, so the thread count never
// changes what next_batch() returns.
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
  int64_t batch_size = 1;     // samples per batch: a rank's micro-batch
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
  int64_t position = -1;       // in the global stream (next_batch(); -1 from load()): keys a micro-batch's noise
  Tensor ids, labels;          // i64 [L], one -201 (video) or -200 (image) placeholder, labels -100 where masked
  Tensor pixels;               // f32 [T, 3, S, S] (T = options.frames for a video, 1 for an image); undefined for text
  Tensor bert_ids, bert_mask;  // i64 [Lb]: [CLS] question [SEP] (BertTokenizer), mask all ones
};

// Where a rank's stream stands: `batches` is the position; the rest says which stream it counts
// in. restore() requires the same seed, samples and batch_size (the same count means other samples
// under other values) and reads rank and world to place the position on its own world.
struct LoaderState {
  int64_t batches = 0;  // batches this rank has taken (k: its next one is global batch k world + rank)
  int rank = 0, world = 1;
  int64_t batch_size = 1;
  uint64_t seed = 0;
  int64_t samples = 0;  // in the shards

  // {"batches":..,"rank":..,"world":..,"batch_size":..,"seed":..,"samples":..}
  std::string to_json() const;
  // Throws bvllm::Error naming `source` and the field for anything missing, malformed or out of range.
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

// The global stream cut into global batches (see Order above). Thread-safe; keeps the permutations
// of the last two epochs it was asked about, so a long run does not recompute them per sample.
class GlobalSampler {
 public:
  // Throws bvllm::Error when samples < 1 or batch_size < 1.
  GlobalSampler(int64_t samples, uint64_t seed, int64_t batch_size);
  int64_t samples() const { return samples_; }
  int64_t batch_size() const { return batch_size_; }
  int64_t at(int64_t position) const;                      // the sample index at a global position
  std::vector<int64_t> batch(int64_t global_batch) const;  // its batch_size sample indices, in order

 private:
  std::shared_ptr<const std::vector<int64_t>> epoch(int64_t epoch) const;
  int64_t samples_, batch_size_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> cache_;
};

class DataLoader {
 public:
  // Opens the shards read-only (after fork / MPI_Init: LMDB environments must not cross a fork).
  // The tokenizers are copied (they share their immutable tables). Threads start on the first
  // next_batch(). Throws bvllm::Error for invalid options or a missing or empty shard directory.
  DataLoader(LoaderOptions options, const Qwen2Tokenizer& qwen, const BertTokenizer& bert);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // This rank's next batch: global batch batches world + rank, batch_size samples. A sample that
  // cannot be loaded (bad conversation, undecodable frame) throws bvllm::Error naming the shard
  // directory, the index and the id; the whole batch is dropped and the stream is at this rank's
  // next batch, so a caller may log the error and go on (every rank still takes one batch per call,
  // so the ranks stay on the same k and a saved position stays valid for any of them).
  std::vector<LoadedSample> next_batch();

  LoaderState state() const;
  // Continues from `state`, which must come from a loader with the same seed, batch_size and
  // sample count (else bvllm::Error naming the field). The ranks step together, so all ranks of a
  // world hold the same count and any of their states will do. On the same world the rank continues
  // at state.batches; on another world w' the state.batches * state.world global batches consumed
  // are split over w' ranks, which must divide them (else bvllm::Error), and each continues at
  // consumed / w'.
  void restore(const LoaderState& state);

  int64_t samples_per_epoch() const { return sampler_.samples(); }  // the whole dataset: N
  // Global samples consumed by all ranks together over N: batches * world * batch_size / N.
  double epoch_position() const;
  const LoaderOptions& options() const { return options_; }
  const ShardReader& reader() const { return reader_; }

  // Sample `index` of the shards as next_batch() would give it (for tools and tests).
  LoadedSample load(int64_t index) const;

 private:
  void start();
  void stop();
  void work();
  // Slot s is sample s % batch_size of this rank's batch s / batch_size: its global position.
  int64_t position(int64_t slot) const;

  LoaderOptions options_;
  Qwen2Tokenizer qwen_;
  BertTokenizer bert_;
  ShardReader reader_;
  GlobalSampler sampler_;
  int64_t batches_ = 0;  // the next batch next_batch() hands out (its first slot is batches_ * batch_size)

  // Prefetch: workers claim slots in order, up to `capacity` ahead of the next batch's first slot,
  // and leave results keyed by slot; next_batch() takes them in order.
  struct Loaded {
    LoadedSample sample;
    std::exception_ptr error;
  };
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  int64_t claimed_ = 0, taken_ = 0;  // slots claimed by a worker; slots next_batch() has taken
  bool stopping_ = false;
  std::map<int64_t, Loaded> results_;
  std::vector<std::thread> workers_;
};

}  // namespace bvllm::data
