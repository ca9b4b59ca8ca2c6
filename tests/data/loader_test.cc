// The training loader: the per-epoch order and the global stream cut into batches, the frame
// choice against B-VLLM's frame_sample (tests/reference/make_frame_sample_fixtures.py), and
// DataLoader on shards written by ShardWriter: the stream crossing epochs with nothing dropped,
// w ranks together taking exactly one process's batches, the same order on a re-run and another
// for another seed, restore() on the same world and on another one, prefetch threads changing
// nothing, a failing batch dropped whole, and what one loaded sample holds.
#include "data/loader.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>  // defines: nlohmann::json
#include <set>

#include "data/clip_image.h"
#include "data/conversation.h"
#include "data/jpeg.h"
#include "data/shard.h"
#include "runtime/error.h"
#include "tests/support/messages.h"
#include "tests/support/qwen_tokenizer.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

bool has(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

// --- order and frames, no shards -------------------------------------------------------------------

TEST(EpochPermutation, IsAPermutationFixedBySeedAndEpoch) {
  const std::vector<int64_t> a = epoch_permutation(1000, 42, 0);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(epoch_permutation(1000, 42, 0), a);
  EXPECT_NE(epoch_permutation(1000, 42, 1), a);
  EXPECT_NE(epoch_permutation(1000, 43, 0), a);
  EXPECT_TRUE(epoch_permutation(0, 1, 0).empty());
  EXPECT_EQ(epoch_permutation(1, 1, 5), std::vector<int64_t>{0});
}

// Every element lands on every position about equally often over many epochs (a biased draw or an
// off-by-one in Fisher-Yates, e.g. j in [0, i) instead of [0, i], shows up here).
TEST(EpochPermutation, PositionsAreUniform) {
  constexpr int n = 5, epochs = 20000;
  std::vector<std::vector<int>> count(n, std::vector<int>(n, 0));
  for (int e = 0; e < epochs; ++e) {
    const auto p = epoch_permutation(n, 7, e);
    for (int pos = 0; pos < n; ++pos) ++count[p[pos]][pos];
  }
  double chi2 = 0;
  const double expected = static_cast<double>(epochs) / n;
  for (int i = 0; i < n; ++i)
    for (int pos = 0; pos < n; ++pos) chi2 += (count[i][pos] - expected) * (count[i][pos] - expected) / expected;
  // 16 degrees of freedom ((n - 1)^2): P(chi2 > 45) < 1e-4.
  EXPECT_LT(chi2, 45.0);
}

// Position p of the stream is sample p % N of epoch p / N's permutation; batch g is positions
// [g B, (g + 1) B). Asked out of order (more epochs than the cache keeps), it gives the same.
TEST(GlobalSampler, ConcatenatesTheEpochPermutationsAndCutsBatches) {
  constexpr int64_t n = 7, batch = 3;
  const GlobalSampler sampler(n, 9, batch);
  EXPECT_EQ(sampler.samples(), n);
  EXPECT_EQ(sampler.batch_size(), batch);
  std::vector<int64_t> stream;
  for (int64_t e = 0; e < 4; ++e) {
    const std::vector<int64_t> order = epoch_permutation(n, 9, e);
    stream.insert(stream.end(), order.begin(), order.end());
  }
  for (int64_t p : {27, 0, 14, 6, 7, 20, 1, 13}) EXPECT_EQ(sampler.at(p), stream[p]) << "position " << p;
  for (int64_t g : {8, 0, 2, 4, 1}) {  // 2 straddles epochs 0 and 1 (positions 6..8)
    EXPECT_EQ(sampler.batch(g), std::vector<int64_t>(stream.begin() + g * batch, stream.begin() + (g + 1) * batch))
        << "global batch " << g;
  }
  EXPECT_CONTAINS(error_of([] { GlobalSampler(0, 1, 1); }), "0 samples, expected >= 1");
  EXPECT_CONTAINS(error_of([] { GlobalSampler(4, 1, 0); }), "batch_size 0, expected >= 1");
}

TEST(UniformFrameIndices, MatchTheReferenceFrameSample) {
  const std::string path = std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/frame_sample.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  const nlohmann::json fixture = nlohmann::json::parse(in);
  ASSERT_GE(fixture["cases"].size(), 600u);
  for (const auto& c : fixture["cases"]) {
    EXPECT_EQ(uniform_frame_indices(c["duration"].get<int64_t>(), c["num_frames"].get<int64_t>()),
              c["indices"].get<std::vector<int64_t>>())
        << "duration " << c["duration"] << ", num_frames " << c["num_frames"];
  }
  EXPECT_TRUE(has(error_of([] { uniform_frame_indices(0, 4); }), "no frames"));
  EXPECT_TRUE(has(error_of([] { uniform_frame_indices(4, 0); }), "count 0"));
}

TEST(LoaderState, JsonRoundTripAndErrors) {
  const LoaderState s{
      .batches = 31, .rank = 5, .world = 8, .batch_size = 3, .seed = 18446744073709551615ULL, .samples = 1234567};
  EXPECT_EQ(LoaderState::from_json(s.to_json(), "ckpt"), s);
  const nlohmann::json good = nlohmann::json::parse(s.to_json());
  for (const char* field : {"batches", "rank", "world", "batch_size", "seed", "samples"}) {
    nlohmann::json missing = good;
    missing.erase(field);
    EXPECT_CONTAINS(
        error_of([&] { LoaderState::from_json(missing.dump(), "ckpt/trainer.json"); }),
        std::string("ckpt/trainer.json: loader state field \"") + field + "\" is missing or not an integer");
    nlohmann::json text = good;
    text[field] = "1";
    EXPECT_CONTAINS(error_of([&] { LoaderState::from_json(text.dump(), "f"); }),
                    std::string("f: loader state field \"") + field + "\" is missing");
  }
  const auto with = [&](const char* field, int64_t value) {
    nlohmann::json j = good;
    j[field] = value;
    return error_of([&] { LoaderState::from_json(j.dump(), "f"); });
  };
  EXPECT_CONTAINS(with("batches", -1), "f: loader state field \"batches\" is -1, expected >= 0");
  EXPECT_CONTAINS(with("rank", 8), "f: loader state field \"rank\" is 8, expected 0 <= rank < world (8)");
  EXPECT_CONTAINS(with("rank", -1), "field \"rank\" is -1");
  EXPECT_CONTAINS(with("world", 0), "field \"world\" is 0, expected >= 1");
  EXPECT_CONTAINS(with("batch_size", 0), "field \"batch_size\" is 0, expected >= 1");
  EXPECT_CONTAINS(with("samples", 0), "field \"samples\" is 0, expected >= 1");
  nlohmann::json huge = good;
  huge["batches"] = 18446744073709551615ULL;  // would wrap to -1 as int64
  EXPECT_CONTAINS(error_of([&] { LoaderState::from_json(huge.dump(), "f"); }),
                  "field \"batches\" is 18446744073709551615, expected >= 0");
  huge = good;
  huge["world"] = 4294967298ULL;  // would be 2 as int
  EXPECT_CONTAINS(error_of([&] { LoaderState::from_json(huge.dump(), "f"); }), "field \"world\" is 4294967298");
  EXPECT_CONTAINS(with("seed", -3), "field \"seed\" is -3, expected an unsigned 64-bit integer");
  EXPECT_CONTAINS(error_of([] { LoaderState::from_json("[1", "f"); }), "f: the loader state is not JSON");
  EXPECT_CONTAINS(error_of([] { LoaderState::from_json("[1]", "f"); }), "f: the loader state must be a JSON object");
  // The format before the global stream, (epoch, offset), is refused by name.
  EXPECT_CONTAINS(
      error_of([] { LoaderState::from_json(R"({"epoch":1,"offset":2,"seed":1,"world":1,"samples":2})", "old"); }),
      "old: loader state field \"batches\" is missing");
}

TEST(LoaderOptions, StagesAndValidation) {
  EXPECT_EQ(LoaderOptions::for_stage(1).frames, 16);
  EXPECT_FALSE(LoaderOptions::for_stage(1).pad_to_square);
  EXPECT_EQ(LoaderOptions::for_stage(2).frames, 32);
  EXPECT_TRUE(LoaderOptions::for_stage(2).pad_to_square);
  LoaderOptions o = LoaderOptions::for_stage(2);
  o.shards = "x";
  EXPECT_NO_THROW(o.validate());
  o.rank = 2;
  o.world = 2;
  EXPECT_TRUE(has(error_of([&] { o.validate(); }), "rank 2 of world 2"));
  o.rank = 0;
  o.batch_size = 0;
  EXPECT_TRUE(has(error_of([&] { o.validate(); }), "LoaderOptions.batch_size is 0"));
}

// --- the loader on real shards ---------------------------------------------------------------------

constexpr int kSamples = 23;
constexpr int kImageSize = 16;

// Stored frames: 20x36 (landscape, so pad_to_square matters), a different colour ramp per frame.
std::string frame_jpeg(int sample, int frame) {
  Tensor rgb = Tensor::empty({20, 36, 3}, DType::U8);
  uint8_t* p = rgb.data<uint8_t>();
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 36; ++x) {
      p[(y * 36 + x) * 3 + 0] = static_cast<uint8_t>(40 * frame + 3 * x);
      p[(y * 36 + x) * 3 + 1] = static_cast<uint8_t>(11 * sample + 5 * y);
      p[(y * 36 + x) * 3 + 2] = static_cast<uint8_t>(200 - 30 * frame);
    }
  return encode_jpeg(rgb, 90);
}

Sample make_sample(int i) {
  Sample s;
  s.set_id("s" + std::to_string(i));
  auto turn = [&](const std::string& from, const std::string& value) {
    Turn* t = s.add_conversations();
    t->set_from(from);
    t->set_value(value);
  };
  switch (i % 3) {
    case 0:  // a video with 1..7 stored frames
      s.set_kind(Sample::VIDEO);
      for (int f = 0; f < i % 7 + 1; ++f) s.add_frames(frame_jpeg(i, f));
      turn("human", "<video>\nWhat is in clip " + std::to_string(i) + "?");
      turn("gpt", "Clip " + std::to_string(i) + " shows colour ramps.");
      break;
    case 1:
      s.set_kind(Sample::IMAGE);
      s.add_frames(frame_jpeg(i, 0));
      turn("human", "What is in picture " + std::to_string(i) + "?\n<image>");
      turn("gpt", "A ramp.");
      break;
    default:
      s.set_kind(Sample::TEXT);
      turn("human", "Say hello " + std::to_string(i) + ".");
      turn("gpt", "Hello " + std::to_string(i) + "!");
  }
  s.set_width(36);
  s.set_height(20);
  return s;
}

BertTokenizer tiny_bert() {
  return BertTokenizer::from_tokens({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "in", "clip", "?"},
                                    "tiny bert vocab");
}

class DataLoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("bvllm_loader_test_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    ShardWriterOptions options;
    options.max_shard_bytes = 24 << 10;  // several shards
    options.batch = 4;
    ShardWriter writer(dir_->string(), options);
    for (int i = 0; i < kSamples; ++i) writer.add(make_sample(i));
    writer.finish();
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override { BVLLM_SKIP_WITHOUT_QWEN_TOKENIZER(); }

  static LoaderOptions options(int rank = 0, int world = 1, int threads = 0, int64_t batch = 2) {
    LoaderOptions o = LoaderOptions::for_stage(2);
    o.shards = dir_->string();
    o.rank = rank;
    o.world = world;
    o.seed = 5;
    o.batch_size = batch;
    o.frames = 4;
    o.image_size = kImageSize;
    o.prefetch_threads = threads;
    o.prefetch_batches = 2;
    return o;
  }
  static DataLoader loader(const LoaderOptions& o) { return DataLoader(o, *testing::qwen_tokenizer(), tiny_bert()); }

  static fs::path* dir_;
};
fs::path* DataLoaderTest::dir_ = nullptr;

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::equal(static_cast<const uint8_t*>(a.raw_data()), static_cast<const uint8_t*>(a.raw_data()) + a.nbytes(),
                    static_cast<const uint8_t*>(b.raw_data()));
}

void expect_same(const std::vector<LoadedSample>& a, const std::vector<LoadedSample>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id) << what << " sample " << i;
    EXPECT_EQ(a[i].index, b[i].index) << what << " sample " << i;
    EXPECT_EQ(a[i].position, b[i].position) << what << " sample " << i;
    EXPECT_TRUE(same_tensor(a[i].ids, b[i].ids)) << what << " ids " << i;
    EXPECT_TRUE(same_tensor(a[i].labels, b[i].labels)) << what << " labels " << i;
    EXPECT_TRUE(same_tensor(a[i].pixels, b[i].pixels)) << what << " pixels " << i;
    EXPECT_TRUE(same_tensor(a[i].bert_ids, b[i].bert_ids)) << what << " bert_ids " << i;
    EXPECT_TRUE(same_tensor(a[i].bert_mask, b[i].bert_mask)) << what << " bert_mask " << i;
  }
}

std::vector<LoadedSample> take(DataLoader& loader, int64_t batches) {
  std::vector<LoadedSample> out;
  for (int64_t b = 0; b < batches; ++b) {
    std::vector<LoadedSample> batch = loader.next_batch();
    EXPECT_EQ(batch.size(), static_cast<size_t>(loader.options().batch_size));
    for (auto& s : batch) out.push_back(std::move(s));
  }
  return out;
}

std::vector<int64_t> indices(const std::vector<LoadedSample>& samples) {
  std::vector<int64_t> out;
  for (const auto& s : samples) out.push_back(s.index);
  return out;
}

// The sample at stream position p, from the epoch permutations alone (not GlobalSampler).
int64_t sample_at(int64_t p, uint64_t seed) { return epoch_permutation(kSamples, seed, p / kSamples)[p % kSamples]; }

TEST_F(DataLoaderTest, ShardsHoldEverySample) {
  const DataLoader l = loader(options());
  ASSERT_GE(l.reader().index().shards.size(), 2u) << "the test wants several shards";
  EXPECT_EQ(l.reader().size(), kSamples);
  EXPECT_EQ(l.samples_per_epoch(), kSamples);
  EXPECT_EQ(loader(options(3, 4)).samples_per_epoch(), kSamples);  // the whole dataset on every rank
}

// One process: 2.6 epochs of batches of 2 (23 is odd, so batch 11 straddles epochs 0 and 1).
// Positions run 0, 1, 2, ... with nothing dropped, each sample is the epoch's permutation at that
// position, and every whole epoch holds each sample once.
TEST_F(DataLoaderTest, TheStreamCrossesEpochsWithNothingDropped) {
  DataLoader l = loader(options());
  const std::vector<LoadedSample> stream = take(l, 30);
  ASSERT_EQ(stream.size(), 60u);
  for (int64_t p = 0; p < 60; ++p) {
    EXPECT_EQ(stream[p].position, p);
    EXPECT_EQ(stream[p].index, sample_at(p, 5)) << "position " << p;
    EXPECT_EQ(stream[p].id, str_cat("s", stream[p].index));
  }
  for (int64_t e : {0, 1}) {
    std::vector<int64_t> epoch(kSamples);
    for (int64_t i = 0; i < kSamples; ++i) epoch[i] = stream[e * kSamples + i].index;
    std::sort(epoch.begin(), epoch.end());
    for (int64_t i = 0; i < kSamples; ++i) EXPECT_EQ(epoch[i], i) << "epoch " << e;
  }
  EXPECT_NE(indices({stream.begin(), stream.begin() + kSamples}),
            indices({stream.begin() + kSamples, stream.begin() + 2 * kSamples}))
      << "epoch 1 repeats epoch 0's order";
}

// Rank r of w takes global batches r, r + w, ...: at its k-th call the ranks together, in rank
// order, hold batches k w .. k w + w - 1 of one process with the same batch size, sample for
// sample (ids, frames, positions), over several epochs. Prefetch threads on some ranks only.
TEST_F(DataLoaderTest, RanksTogetherTakeTheBatchesOfOneProcess) {
  for (int64_t batch : {1, 2, 5}) {
    for (int world : {1, 2, 3, 4}) {
      const int64_t calls = (2 * kSamples + 10) / (world * batch) + 1;  // past two epoch boundaries
      DataLoader single = loader(options(0, 1, 1, batch));
      std::vector<std::vector<LoadedSample>> reference;
      for (int64_t g = 0; g < calls * world; ++g) reference.push_back(single.next_batch());
      std::vector<std::unique_ptr<DataLoader>> ranks;
      for (int r = 0; r < world; ++r)
        ranks.push_back(std::make_unique<DataLoader>(options(r, world, r % 2 == 1 ? 2 : 0, batch),
                                                     *testing::qwen_tokenizer(), tiny_bert()));
      for (int64_t k = 0; k < calls; ++k) {
        for (int r = 0; r < world; ++r) {
          const std::string what = str_cat("batch ", batch, ", world ", world, ", rank ", r, ", call ", k);
          const std::vector<LoadedSample> got = ranks[r]->next_batch();
          const int64_t g = k * world + r;
          expect_same(got, reference[g], what);
          ASSERT_EQ(got.size(), static_cast<size_t>(batch)) << what;
          for (int64_t j = 0; j < batch; ++j) {
            EXPECT_EQ(got[j].position, g * batch + j) << what;  // consecutive within the batch
            EXPECT_EQ(got[j].index, sample_at(g * batch + j, 5)) << what;
          }
        }
      }
    }
  }
}

TEST_F(DataLoaderTest, SameOrderOnARerunAnotherForAnotherSeed) {
  DataLoader a = loader(options());
  DataLoader b = loader(options());
  const std::vector<LoadedSample> first = take(a, 12);  // one epoch of 23 and then some
  expect_same(first, take(b, 12), "rerun");
  const std::vector<int64_t> order = indices(first);
  std::vector<int64_t> epoch0(order.begin(), order.begin() + kSamples);
  std::sort(epoch0.begin(), epoch0.end());
  for (int i = 0; i < kSamples; ++i) EXPECT_EQ(epoch0[i], i);  // one rank: every sample once per epoch

  LoaderOptions other = options();
  other.seed = 6;
  DataLoader c = loader(other);
  EXPECT_NE(indices(take(c, 12)), indices(first));
}

TEST_F(DataLoaderTest, RestoreOnTheSameWorldGivesTheSameNextBatches) {
  DataLoader straight = loader(options(1, 2, 2));
  const std::vector<LoadedSample> before = take(straight, 4);  // global batches 1, 3, 5, 7: positions < 16
  const LoaderState saved = straight.state();
  EXPECT_EQ(saved, (LoaderState{.batches = 4, .rank = 1, .world = 2, .batch_size = 2, .seed = 5, .samples = kSamples}));
  const std::vector<LoadedSample> after = take(straight, 5);  // across the epoch boundary at 23

  DataLoader resumed = loader(options(1, 2, 2));
  resumed.restore(LoaderState::from_json(saved.to_json(), "saved state"));
  EXPECT_EQ(resumed.state(), saved);
  expect_same(take(resumed, 5), after, "resumed");

  // restore() on a loader that already ran ahead, with its prefetch threads busy.
  DataLoader rewound = loader(options(1, 2, 3));
  take(rewound, 7);
  rewound.restore(saved);
  expect_same(take(rewound, 5), after, "rewound");

  // The ranks step together, so rank 0's state places rank 1 just as well.
  DataLoader other_rank = loader(options(1, 2, 0));
  LoaderState from_rank0 = saved;
  from_rank0.rank = 0;
  other_rank.restore(from_rank0);
  EXPECT_EQ(other_rank.state(), saved);
  expect_same(take(other_rank, 5), after, "from rank 0's state");

  LoaderState wrong = saved;
  wrong.seed = 99;
  EXPECT_CONTAINS(error_of([&] { resumed.restore(wrong); }), "is from another stream: its seed is 99, this loader's 5");
  wrong = saved;
  wrong.samples = 24;
  EXPECT_CONTAINS(error_of([&] { resumed.restore(wrong); }), "its samples is 24, this loader's 23");
  wrong = saved;
  wrong.batch_size = 4;
  EXPECT_CONTAINS(error_of([&] { resumed.restore(wrong); }), "its batch_size is 4, this loader's 2");
}

// Saved at world 2 after 3 batches on each rank: global batches 0..5 are consumed. World 3 takes
// 6, 7, 8 next (2 batches on each rank behind it), world 1 takes 6; world 4 cannot split 6.
TEST_F(DataLoaderTest, RestoreOnAnotherWorldContinuesTheGlobalStream) {
  DataLoader single = loader(options());
  const std::vector<LoadedSample> reference = take(single, 12);  // global batches 0..11
  const auto global_batch = [&](int64_t g) {
    return std::vector<LoadedSample>(reference.begin() + 2 * g, reference.begin() + 2 * g + 2);
  };
  DataLoader saver = loader(options(0, 2, 1));
  take(saver, 3);
  const LoaderState saved = LoaderState::from_json(saver.state().to_json(), "saved state");
  EXPECT_EQ(saved.batches, 3);
  EXPECT_DOUBLE_EQ(saver.epoch_position(), 12.0 / kSamples);

  for (int r = 0; r < 3; ++r) {
    DataLoader l = loader(options(r, 3, r));
    l.restore(saved);
    EXPECT_EQ(l.state().batches, 2);
    EXPECT_EQ(l.state().world, 3);
    EXPECT_EQ(l.state().rank, r);
    EXPECT_DOUBLE_EQ(l.epoch_position(), 12.0 / kSamples);  // the same place in the stream
    expect_same(l.next_batch(), global_batch(6 + r), str_cat("world 3 rank ", r, " first batch"));
    expect_same(l.next_batch(), global_batch(9 + r), str_cat("world 3 rank ", r, " second batch"));
  }
  DataLoader one = loader(options(0, 1, 2));
  one.restore(saved);
  EXPECT_EQ(one.state().batches, 6);
  expect_same(take(one, 6), std::vector<LoadedSample>(reference.begin() + 12, reference.end()), "world 1");

  DataLoader four = loader(options(1, 4));
  const std::string message = error_of([&] { four.restore(saved); });
  EXPECT_CONTAINS(message,
                  "the global batch position 6 (3 batches on each of 2 ranks) cannot be split evenly over "
                  "the new world of 4 ranks (6 % 4 = 2)");
}

TEST_F(DataLoaderTest, EpochPositionCountsTheSamplesOfAllRanks) {
  DataLoader l = loader(options(2, 3, 0, 5));
  EXPECT_EQ(l.epoch_position(), 0.0);
  take(l, 1);
  EXPECT_DOUBLE_EQ(l.epoch_position(), 15.0 / kSamples);  // 3 ranks x 5 samples
  take(l, 2);
  EXPECT_DOUBLE_EQ(l.epoch_position(), 45.0 / kSamples);
}

TEST_F(DataLoaderTest, PrefetchThreadsDoNotChangeTheBatches) {
  DataLoader none = loader(options(0, 1, 0));
  DataLoader one = loader(options(0, 1, 1));
  DataLoader three = loader(options(0, 1, 3));
  const std::vector<LoadedSample> reference = take(none, 15);
  expect_same(take(one, 15), reference, "1 thread");
  expect_same(take(three, 15), reference, "3 threads");
}

// One sample of each kind against the pieces it is made of (each tested against its reference in
// conversation_test, clip_image_test and jpeg_test).
TEST_F(DataLoaderTest, ALoadedSampleHoldsTextQuestionAndFrames) {
  const Qwen2Tokenizer& qwen = *testing::qwen_tokenizer();
  const BertTokenizer bert = tiny_bert();
  // Size 20 is the stored frames' short side: no resize without the pad.
  for (auto [stage, size] : {std::pair{1, kImageSize}, std::pair{2, kImageSize}, std::pair{1, 20}}) {
    LoaderOptions o = options();
    o.stage = stage;
    o.pad_to_square = stage == 2;
    o.frames = 8;
    o.image_size = size;
    const DataLoader l = loader(o);
    for (int index = 0; index < kSamples; ++index) {
      const Sample stored = l.reader().get(index);
      if (stage == 1 && stored.kind() == Sample::TEXT) continue;  // stage 1 takes captions only
      const LoadedSample s = l.load(index);
      EXPECT_EQ(s.id, stored.id());
      EXPECT_EQ(s.index, index);
      const SampleText text = tokenize_sample(stored, qwen, {.stage = stage});
      EXPECT_EQ(s.ids.to_vector<int64_t>(), text.ids);
      EXPECT_EQ(s.labels.to_vector<int64_t>(), text.labels);
      const std::vector<int32_t> question = bert.encode(text.question);
      EXPECT_EQ(s.bert_ids.to_vector<int64_t>(), std::vector<int64_t>(question.begin(), question.end()));
      EXPECT_EQ(s.bert_mask.to_vector<int64_t>(), std::vector<int64_t>(question.size(), 1));
      if (stored.kind() == Sample::TEXT) {
        EXPECT_FALSE(s.pixels.defined());
        continue;
      }
      const std::vector<int64_t> picks =
          stored.kind() == Sample::VIDEO ? uniform_frame_indices(stored.frames_size(), 8) : std::vector<int64_t>{0};
      ASSERT_EQ(s.pixels.shape(), (Shape{static_cast<int64_t>(picks.size()), 3, size, size}));
      ClipImageOptions clip;
      clip.size = clip.crop = size;
      clip.mode = stage == 2 ? ClipImageOptions::Mode::Pad : ClipImageOptions::Mode::Square;
      for (size_t f = 0; f < picks.size(); ++f) {
        const Tensor expected = clip_preprocess(decode_jpeg(stored.frames(static_cast<int>(picks[f])), "test"), clip);
        EXPECT_TRUE(same_tensor(s.pixels.select(0, static_cast<int64_t>(f)).contiguous(), expected))
            << "stage " << stage << " size " << size << " sample " << index << " frame " << f;
      }
    }
  }
}

TEST_F(DataLoaderTest, ErrorsNameTheShardsAndTheSample) {
  // A stage-1 loader meets a text-only sample: the error names the directory, index and id.
  LoaderOptions o = options();
  o.stage = 1;
  const DataLoader l = loader(o);
  const std::string message = error_of([&] { l.load(2); });
  EXPECT_TRUE(has(message, dir_->string() + ": sample 2: sample \"s2\": stage 1 (plain) takes video or image"))
      << message;

  LoaderOptions missing = options();
  missing.shards = (*dir_ / "nowhere").string();
  EXPECT_TRUE(has(error_of([&] { loader(missing); }), "nowhere"));
  // Fewer samples than ranks: the last rank's first batch, global batch 23, is positions 46 and 47.
  DataLoader crowded = loader(options(23, 24));
  const std::vector<LoadedSample> batch = crowded.next_batch();
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].position, 46);
  EXPECT_EQ(batch[1].position, 47);
  EXPECT_EQ(batch[0].index, sample_at(46, 5));
  EXPECT_EQ(batch[1].index, sample_at(47, 5));
}

// A failing sample fails its whole batch, in stream order with or without prefetch threads, and
// the next call gives the rank's next batch. Stage 1 refuses text-only samples (every third one).
TEST_F(DataLoaderTest, AFailingBatchIsDroppedWhole) {
  for (int threads : {0, 2}) {
    int failed = 0;
    LoaderOptions o = options(1, 2, threads, 3);
    o.stage = 1;
    DataLoader l = loader(o);
    for (int64_t k = 0; k < 8; ++k) {
      const int64_t g = 2 * k + 1;
      bool text = false;
      for (int64_t j = 0; j < 3; ++j) text = text || sample_at(g * 3 + j, 5) % 3 == 2;
      std::vector<LoadedSample> batch;
      const std::string message = error_of([&] { batch = l.next_batch(); });
      const std::string what = str_cat("threads ", threads, ", call ", k);
      EXPECT_EQ(has(message, "text-only"), text) << what << ": " << message;
      failed += text;
      if (!text) {
        ASSERT_EQ(batch.size(), 3u) << what;
        for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(batch[j].position, g * 3 + j) << what;
      }
      EXPECT_EQ(l.state().batches, k + 1) << what;
    }
    EXPECT_GT(failed, 0) << "the test wants failing batches";
    EXPECT_LT(failed, 8) << "the test wants batches that load";
  }
}

}  // namespace
}  // namespace bvllm::data
