#include "data/loader.h"

#include <glog/logging.h>  // defines: CHECK

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <random>
#include <utility>

#include "data/clip_image.h"
#include "data/conversation.h"
#include "data/jpeg.h"
#include "runtime/error.h"

namespace bvllm::data {

namespace {

// SplitMix64's finalizer: spreads (seed, epoch) over the generator's seed so nearby pairs give
// unrelated streams.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [0, n) by rejection: the draws below `limit` (a multiple of n) map evenly.
uint64_t bounded(std::mt19937_64& gen, uint64_t n) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  const uint64_t limit = kMax - kMax % n;
  for (;;) {
    const uint64_t x = gen();
    if (x < limit) return x % n;
  }
}

Tensor i64_tensor(const std::vector<int64_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::I64);
  std::copy(values.begin(), values.end(), t.data<int64_t>());
  return t;
}

// clip_preprocess without the copy its resize makes when the size is already right: prep stores
// frames with the short side at 336 by the same Pillow resize, so without the pad that is the
// usual case, and the copy (Tensor::clone of u8) costs more than the rest of the frame.
Tensor clip_pixels(const Tensor& rgb, const ClipImageOptions& clip) {
  Tensor image = clip.mode == ClipImageOptions::Mode::Pad ? expand_to_square(rgb, clip_pad_colour(clip)) : rgb;
  const auto [h, w] = clip_resize_size(image.size(0), image.size(1), clip.size);
  if (h != image.size(0) || w != image.size(1)) image = resize_bicubic_pil(image, h, w);
  return clip_normalize(center_crop(image, clip.crop), clip);
}

int64_t checked_size(const ShardReader& reader, const LoaderOptions& options) {
  const int64_t n = reader.size();
  BVLLM_REQUIRE(n >= 1, options.shards, ": no samples in the shards");
  return n;
}

const LoaderOptions& validated(const LoaderOptions& options) {
  options.validate();
  return options;
}

}  // namespace

// --- options and state ---------------------------------------------------------------------------

LoaderOptions LoaderOptions::for_stage(int stage) {
  BVLLM_REQUIRE(stage == 1 || stage == 2, "LoaderOptions::for_stage: stage ", stage, ", expected 1 or 2");
  LoaderOptions options;
  options.stage = stage;
  options.frames = stage == 1 ? 16 : 32;
  options.pad_to_square = stage == 2;
  return options;
}

void LoaderOptions::validate() const {
  BVLLM_REQUIRE(!shards.empty(), "LoaderOptions.shards is empty (expected a shard directory with index.json)");
  BVLLM_REQUIRE(world >= 1 && rank >= 0 && rank < world, "LoaderOptions: rank ", rank, " of world ", world,
                " (expected 0 <= rank < world)");
  BVLLM_REQUIRE(batch_size >= 1, "LoaderOptions.batch_size is ", batch_size, ", expected >= 1");
  BVLLM_REQUIRE(stage == 1 || stage == 2, "LoaderOptions.stage is ", stage, ", expected 1 or 2");
  BVLLM_REQUIRE(frames >= 1, "LoaderOptions.frames is ", frames, ", expected >= 1");
  BVLLM_REQUIRE(image_size >= 1, "LoaderOptions.image_size is ", image_size, ", expected >= 1");
  BVLLM_REQUIRE(prefetch_threads >= 0, "LoaderOptions.prefetch_threads is ", prefetch_threads, ", expected >= 0");
  BVLLM_REQUIRE(prefetch_batches >= 1, "LoaderOptions.prefetch_batches is ", prefetch_batches, ", expected >= 1");
  BVLLM_REQUIRE(max_length >= 1, "LoaderOptions.max_length is ", max_length, ", expected >= 1");
}

std::string LoaderState::to_json() const {
  nlohmann::ordered_json j;
  j["batches"] = batches;
  j["rank"] = rank;
  j["world"] = world;
  j["batch_size"] = batch_size;
  j["seed"] = seed;
  j["samples"] = samples;
  return j.dump();
}

LoaderState LoaderState::from_json(std::string_view text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(source, ": the loader state is not JSON (", e.what(), ")"));
  }
  BVLLM_REQUIRE(j.is_object(), source, ": the loader state must be a JSON object");
  const auto present = [&](const char* name) -> const nlohmann::json& {
    BVLLM_REQUIRE(j.contains(name) && j[name].is_number_integer(), source, ": loader state field \"", name,
                  "\" is missing or not an integer");
    return j[name];
  };
  // An integer in [low, high]; `expected` says the range in words.
  const auto integer = [&](const char* name, int64_t low, int64_t high, const std::string& expected) {
    const nlohmann::json& v = present(name);
    // Above int64's range, get<int64_t>() would wrap: compare unsigned values as unsigned.
    const bool fits = v.is_number_unsigned()
                          ? v.get<uint64_t>() <= static_cast<uint64_t>(high) && v.get<int64_t>() >= low
                          : v.get<int64_t>() >= low && v.get<int64_t>() <= high;
    BVLLM_REQUIRE(fits, source, ": loader state field \"", name, "\" is ", v.dump(), ", expected ", expected);
    return v.get<int64_t>();
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  LoaderState s;
  s.batches = integer("batches", 0, kMax, ">= 0");
  s.world = static_cast<int>(integer("world", 1, std::numeric_limits<int>::max(), ">= 1"));
  s.rank = static_cast<int>(integer("rank", 0, s.world - 1, str_cat("0 <= rank < world (", s.world, ")")));
  s.batch_size = integer("batch_size", 1, kMax, ">= 1");
  BVLLM_REQUIRE(present("seed").is_number_unsigned(), source, ": loader state field \"seed\" is ", j["seed"].dump(),
                ", expected an unsigned 64-bit integer");
  s.seed = j["seed"].get<uint64_t>();
  s.samples = integer("samples", 1, kMax, ">= 1");
  return s;
}

// --- order ---------------------------------------------------------------------------------------

std::vector<int64_t> epoch_permutation(int64_t samples, uint64_t seed, int64_t epoch) {
  BVLLM_REQUIRE(samples >= 0 && epoch >= 0, "epoch_permutation: samples ", samples, ", epoch ", epoch,
                " (expected >= 0)");
  std::vector<int64_t> order(static_cast<size_t>(samples));
  for (int64_t i = 0; i < samples; ++i) order[i] = i;
  // std::mt19937_64's output for a given seed is fixed by the C++ standard; the draw and the shuffle
  // are ours, so the order does not depend on the standard library.
  std::mt19937_64 gen(mix(mix(seed) + static_cast<uint64_t>(epoch)));
  for (int64_t i = samples - 1; i > 0; --i) std::swap(order[i], order[bounded(gen, static_cast<uint64_t>(i) + 1)]);
  return order;
}

std::vector<int64_t> uniform_frame_indices(int64_t available, int64_t count) {
  BVLLM_REQUIRE(available >= 1, "uniform_frame_indices: no frames to sample from");
  BVLLM_REQUIRE(count >= 1, "uniform_frame_indices: count ", count, ", expected >= 1");
  const double seg = static_cast<double>(available - 1) / static_cast<double>(count);
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const double start = seg * static_cast<double>(i), end = seg * static_cast<double>(i + 1);
    // np.round is round half to even: nearbyint in the default rounding mode.
    out[i] = static_cast<int64_t>(std::nearbyint((start + end) / 2 + 1e-6));
  }
  return out;
}

GlobalSampler::GlobalSampler(int64_t samples, uint64_t seed, int64_t batch_size)
    : samples_(samples), batch_size_(batch_size), seed_(seed) {
  BVLLM_REQUIRE(samples >= 1, "GlobalSampler: ", samples, " samples, expected >= 1");
  BVLLM_REQUIRE(batch_size >= 1, "GlobalSampler: batch_size ", batch_size, ", expected >= 1");
}

std::shared_ptr<const std::vector<int64_t>> GlobalSampler::epoch(int64_t epoch) const {
  {
    std::lock_guard lock(mutex_);
    if (auto it = cache_.find(epoch); it != cache_.end()) return it->second;
  }
  // Built outside the lock (two threads may both build it; the results are equal).
  auto order = std::make_shared<const std::vector<int64_t>>(epoch_permutation(samples_, seed_, epoch));
  std::lock_guard lock(mutex_);
  cache_.emplace(epoch, order);
  while (cache_.size() > 2) cache_.erase(cache_.begin());  // the oldest epoch
  return order;
}

int64_t GlobalSampler::at(int64_t position) const {
  CHECK_GE(position, 0);
  return (*epoch(position / samples_))[position % samples_];
}

std::vector<int64_t> GlobalSampler::batch(int64_t global_batch) const {
  CHECK_GE(global_batch, 0);
  std::vector<int64_t> out(static_cast<size_t>(batch_size_));
  for (int64_t j = 0; j < batch_size_; ++j) out[j] = at(global_batch * batch_size_ + j);
  return out;
}

// --- the loader ----------------------------------------------------------------------------------

DataLoader::DataLoader(LoaderOptions options, const Qwen2Tokenizer& qwen, const BertTokenizer& bert)
    : options_(validated(options)),
      qwen_(qwen),
      bert_(bert),
      reader_(options_.shards),
      sampler_(checked_size(reader_, options_), options_.seed, options_.batch_size) {}

DataLoader::~DataLoader() { stop(); }

LoadedSample DataLoader::load(int64_t index) const {
  const Sample sample = reader_.get(index);
  const std::string what = str_cat(options_.shards, ": sample ", index, " \"", sample.id(), "\"");
  LoadedSample out;
  out.id = sample.id();
  out.index = index;
  try {
    const SampleText text =
        tokenize_sample(sample, qwen_, {.stage = options_.stage, .max_length = options_.max_length});
    out.ids = i64_tensor(text.ids);
    out.labels = i64_tensor(text.labels);
    const std::vector<int32_t> bert_ids = bert_.encode(text.question);
    out.bert_ids = i64_tensor(std::vector<int64_t>(bert_ids.begin(), bert_ids.end()));
    out.bert_mask = i64_tensor(std::vector<int64_t>(bert_ids.size(), 1));
  } catch (const Error& e) {
    throw Error(str_cat(options_.shards, ": sample ", index, ": ", e.what()));
  }
  if (sample.kind() == Sample::TEXT) return out;

  BVLLM_REQUIRE(sample.frames_size() >= 1, what, ": a ", sample.kind() == Sample::VIDEO ? "video" : "image",
                " sample without frames");
  // An image is its one stored frame; a video gets `frames` of its 1-fps frames.
  const std::vector<int64_t> picks = sample.kind() == Sample::VIDEO
                                         ? uniform_frame_indices(sample.frames_size(), options_.frames)
                                         : std::vector<int64_t>{0};
  ClipImageOptions clip;
  clip.size = clip.crop = options_.image_size;
  clip.mode = options_.pad_to_square ? ClipImageOptions::Mode::Pad : ClipImageOptions::Mode::Square;
  const int64_t t = static_cast<int64_t>(picks.size()), s = options_.image_size, plane = 3 * s * s;
  out.pixels = Tensor::empty({t, 3, s, s}, DType::F32);
  float* dst = out.pixels.data<float>();
  for (int64_t i = 0; i < t; ++i) {
    // Fewer stored frames than `frames` repeat indices (in order): decode each one once.
    if (i > 0 && picks[i] == picks[i - 1]) {
      std::copy_n(dst + (i - 1) * plane, plane, dst + i * plane);
      continue;
    }
    const Tensor rgb = decode_jpeg(sample.frames(static_cast<int>(picks[i])), str_cat(what, " frame ", picks[i]));
    const Tensor chw = clip_pixels(rgb, clip);
    std::copy_n(chw.data<float>(), plane, dst + i * plane);
  }
  return out;
}

int64_t DataLoader::position(int64_t slot) const {
  const int64_t b = options_.batch_size;
  return ((slot / b) * options_.world + options_.rank) * b + slot % b;
}

std::vector<LoadedSample> DataLoader::next_batch() {
  const int64_t first = batches_ * options_.batch_size;
  std::vector<LoadedSample> batch;
  batch.reserve(static_cast<size_t>(options_.batch_size));
  if (options_.prefetch_threads == 0) {
    ++batches_;  // past a failing batch, as with prefetching
    for (int64_t slot = first; slot < first + options_.batch_size; ++slot) {
      const int64_t p = position(slot);
      batch.push_back(load(sampler_.at(p)));
      batch.back().position = p;
    }
    return batch;
  }
  if (workers_.empty()) start();
  // Every slot of the batch is taken, even after an error, so the workers' results stay in step
  // with batches_ and the next call starts at the next batch.
  std::exception_ptr error;
  for (int64_t slot = first; slot < first + options_.batch_size; ++slot) {
    Loaded loaded;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [&] { return results_.count(slot) > 0; });
      auto it = results_.find(slot);
      loaded = std::move(it->second);
      results_.erase(it);
      taken_ = slot + 1;
    }
    space_.notify_all();
    if (loaded.error) {
      if (!error) error = loaded.error;
      continue;
    }
    batch.push_back(std::move(loaded.sample));
  }
  ++batches_;
  if (error) std::rethrow_exception(error);
  return batch;
}

void DataLoader::start() {
  CHECK(workers_.empty());
  {
    std::lock_guard lock(mutex_);
    stopping_ = false;
    claimed_ = taken_ = batches_ * options_.batch_size;
  }
  for (int i = 0; i < options_.prefetch_threads; ++i) workers_.emplace_back([this] { work(); });
}

void DataLoader::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  space_.notify_all();
  for (std::thread& w : workers_) w.join();
  workers_.clear();
  results_.clear();
}

void DataLoader::work() {
  const int64_t capacity = options_.prefetch_batches * options_.batch_size;
  for (;;) {
    int64_t slot = 0;
    {
      std::unique_lock lock(mutex_);
      space_.wait(lock, [&] { return stopping_ || claimed_ < taken_ + capacity; });
      if (stopping_) return;
      slot = claimed_++;
    }
    Loaded loaded;
    try {
      const int64_t p = position(slot);
      loaded.sample = load(sampler_.at(p));
      loaded.sample.position = p;
    } catch (...) {
      loaded.error = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      results_.emplace(slot, std::move(loaded));
    }
    ready_.notify_all();
  }
}

LoaderState DataLoader::state() const {
  return {.batches = batches_,
          .rank = options_.rank,
          .world = options_.world,
          .batch_size = options_.batch_size,
          .seed = options_.seed,
          .samples = sampler_.samples()};
}

double DataLoader::epoch_position() const {
  return static_cast<double>(batches_ * options_.world * options_.batch_size) / static_cast<double>(sampler_.samples());
}

void DataLoader::restore(const LoaderState& state) {
  const auto differs = [&](const char* field, const auto& saved, const auto& ours) {
    return str_cat("DataLoader::restore: the state ", state.to_json(), " is from another stream: its ", field, " is ",
                   saved, ", this loader's ", ours, " (", options_.shards, ")");
  };
  BVLLM_REQUIRE(state.seed == options_.seed, differs("seed", state.seed, options_.seed));
  BVLLM_REQUIRE(state.samples == sampler_.samples(), differs("samples", state.samples, sampler_.samples()));
  BVLLM_REQUIRE(state.batch_size == options_.batch_size, differs("batch_size", state.batch_size, options_.batch_size));
  BVLLM_REQUIRE(state.batches >= 0 && state.world >= 1 && state.rank >= 0 && state.rank < state.world,
                "DataLoader::restore: the state ", state.to_json(),
                " has batches < 0, world < 1 or a rank outside [0, world)");
  int64_t batches = state.batches;
  if (state.world != options_.world) {
    // The ranks of the saved run took global batches [0, consumed) together; the new world's ranks
    // take the next ones in turn, which is the saved run's stream only if each rank has the same
    // count of them behind it.
    const int64_t consumed = state.batches * state.world;
    BVLLM_REQUIRE(consumed % options_.world == 0, "DataLoader::restore: the global batch position ", consumed, " (",
                  state.batches, " batches on each of ", state.world,
                  " ranks) cannot be split evenly over the new world of ", options_.world, " ranks (", consumed, " % ",
                  options_.world, " = ", consumed % options_.world, ")");
    batches = consumed / options_.world;
  }
  stop();
  batches_ = batches;
}

}  // namespace bvllm::data
