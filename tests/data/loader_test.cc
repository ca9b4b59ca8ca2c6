// The training loader: the per-epoch order and each rank's share, the frame choice against
// B-VLLM's frame_sample (tests/reference/make_frame_sample_fixtures.py), and DataLoader on shards
// written by ShardWriter: 4 ranks disjoint and covering the epoch, the same order on a re-run,
// another order for another seed or epoch, restore() mid-epoch, prefetch threads changing nothing,
// and what one loaded sample holds.
#include "data/loader.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <algorithm>
#include <filesystem>
#include <fstream>
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

TEST(RankSampler, FourRanksShareTheEpochDisjointly) {
  constexpr int64_t n = 103;  // 103 % 4 = 3 samples dropped per epoch
  for (int64_t epoch : {0, 1, 7}) {
    const std::vector<int64_t> order = epoch_permutation(n, 9, epoch);
    std::vector<int64_t> all;
    for (int r = 0; r < 4; ++r) {
      const RankSampler sampler(n, r, 4, 9);
      ASSERT_EQ(sampler.per_epoch(), 25);
      const std::vector<int64_t> share = sampler.share(epoch);
      for (int64_t j = 0; j < 25; ++j) {
        EXPECT_EQ(share[j], order[r + 4 * j]);  // round robin over the epoch's order
        EXPECT_EQ(sampler.at(epoch * 25 + j), share[j]);
      }
      all.insert(all.end(), share.begin(), share.end());
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "a sample on two ranks";
    std::vector<int64_t> kept(order.begin(), order.begin() + 100);
    std::sort(kept.begin(), kept.end());
    EXPECT_EQ(all, kept);
  }
  EXPECT_TRUE(has(error_of([] { RankSampler(3, 0, 4, 1); }), "3 samples cannot give each of 4 ranks"));
  EXPECT_TRUE(has(error_of([] { RankSampler(8, 4, 4, 1); }), "rank 4 of world 4"));
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
  const LoaderState s{.epoch = 3, .offset = 17, .seed = 18446744073709551615ULL, .world = 8, .samples = 1234567};
  EXPECT_EQ(LoaderState::from_json(s.to_json(), "ckpt"), s);
  EXPECT_TRUE(has(error_of([] { LoaderState::from_json("{\"epoch\": 1}", "ckpt/loader.json"); }),
                  "ckpt/loader.json: loader state field \"offset\" is missing"));
  EXPECT_TRUE(has(error_of([] { LoaderState::from_json("[1", "f"); }), "f: the loader state is not JSON"));
  EXPECT_TRUE(
      has(error_of([] { LoaderState::from_json(R"({"epoch":0,"offset":-1,"seed":1,"world":1,"samples":2})", "f"); }),
          "negative"));
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

  static LoaderOptions options(int rank = 0, int world = 1, int threads = 0) {
    LoaderOptions o = LoaderOptions::for_stage(2);
    o.shards = dir_->string();
    o.rank = rank;
    o.world = world;
    o.seed = 5;
    o.batch_size = 2;
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
    EXPECT_TRUE(same_tensor(a[i].ids, b[i].ids)) << what << " ids " << i;
    EXPECT_TRUE(same_tensor(a[i].labels, b[i].labels)) << what << " labels " << i;
    EXPECT_TRUE(same_tensor(a[i].pixels, b[i].pixels)) << what << " pixels " << i;
    EXPECT_TRUE(same_tensor(a[i].bert_ids, b[i].bert_ids)) << what << " bert_ids " << i;
    EXPECT_TRUE(same_tensor(a[i].bert_mask, b[i].bert_mask)) << what << " bert_mask " << i;
  }
}

std::vector<LoadedSample> take(DataLoader& loader, int batches) {
  std::vector<LoadedSample> out;
  for (int b = 0; b < batches; ++b) {
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

TEST_F(DataLoaderTest, ShardsHoldEverySample) {
  const DataLoader l = loader(options());
  ASSERT_GE(l.reader().index().shards.size(), 2u) << "the test wants several shards";
  EXPECT_EQ(l.reader().size(), kSamples);
  EXPECT_EQ(l.samples_per_epoch(), kSamples);
}

// 23 samples over 4 ranks: 5 each per epoch, 3 dropped; within an epoch the ranks are disjoint and
// together take exactly the first 20 positions of the epoch's order. Batches of 2 straddle epochs
// (5 is odd), and the stream just runs on.
TEST_F(DataLoaderTest, FourRanksTakeDisjointSharesCoveringTheEpoch) {
  std::vector<std::vector<int64_t>> streams;
  for (int r = 0; r < 4; ++r) {
    DataLoader l = loader(options(r, 4, r % 2));  // threads on some ranks: no difference expected
    EXPECT_EQ(l.samples_per_epoch(), 5);
    streams.push_back(indices(take(l, 5)));  // 10 samples: epochs 0 and 1
    EXPECT_EQ(l.state().epoch, 2);
    EXPECT_EQ(l.state().offset, 0);
  }
  for (int64_t epoch : {0, 1}) {
    std::vector<int64_t> all;
    for (int r = 0; r < 4; ++r)
      all.insert(all.end(), streams[r].begin() + epoch * 5, streams[r].begin() + epoch * 5 + 5);
    std::vector<int64_t> sorted = all;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "epoch " << epoch;
    const std::vector<int64_t> order = epoch_permutation(kSamples, 5, epoch);
    std::vector<int64_t> kept(order.begin(), order.begin() + 20);
    std::sort(kept.begin(), kept.end());
    EXPECT_EQ(sorted, kept) << "epoch " << epoch;
  }
  EXPECT_NE(std::vector<int64_t>(streams[0].begin(), streams[0].begin() + 5),
            std::vector<int64_t>(streams[0].begin() + 5, streams[0].end()))
      << "epoch 1 repeats epoch 0's order";
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

TEST_F(DataLoaderTest, RestoreMidEpochGivesTheSameNextBatches) {
  DataLoader straight = loader(options(1, 2, 2));
  const std::vector<LoadedSample> before = take(straight, 4);  // 8 of rank 1's 11 per epoch
  const LoaderState saved = straight.state();
  EXPECT_EQ(saved.epoch, 0);
  EXPECT_EQ(saved.offset, 8);
  const std::vector<LoadedSample> after = take(straight, 5);  // across the epoch boundary

  DataLoader resumed = loader(options(1, 2, 2));
  resumed.restore(LoaderState::from_json(saved.to_json(), "saved state"));
  EXPECT_EQ(resumed.state(), saved);
  expect_same(take(resumed, 5), after, "resumed");

  // restore() on a loader that already ran ahead, with its prefetch threads busy.
  DataLoader rewound = loader(options(1, 2, 3));
  take(rewound, 7);
  rewound.restore(saved);
  expect_same(take(rewound, 5), after, "rewound");

  LoaderState wrong = saved;
  wrong.seed = 99;
  EXPECT_TRUE(has(error_of([&] { resumed.restore(wrong); }), "another seed, world or shard set"));
  wrong = saved;
  wrong.offset = 11;
  EXPECT_TRUE(has(error_of([&] { resumed.restore(wrong); }), "offset 11 is outside"));
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
  LoaderOptions crowded = options(0, 24);
  EXPECT_TRUE(has(error_of([&] { loader(crowded); }), "23 samples in the shards, fewer than the 24"));
}

// An error in a prefetch thread reaches next_batch() in stream order.
TEST_F(DataLoaderTest, PrefetchErrorsSurfaceInOrder) {
  LoaderOptions o = options(0, 1, 2);
  o.stage = 1;  // every third sample (text-only) fails
  o.batch_size = 1;
  DataLoader l = loader(o);
  const RankSampler sampler(kSamples, 0, 1, o.seed);
  for (int64_t step = 0; step < 6; ++step) {
    const bool text = sampler.at(step) % 3 == 2;
    const std::string message = error_of([&] { l.next_batch(); });
    EXPECT_EQ(has(message, "text-only"), text) << "step " << step << ": " << message;
    EXPECT_EQ(l.state().offset, step + 1);
  }
}

}  // namespace
}  // namespace bvllm::data
