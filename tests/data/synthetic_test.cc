// The synthetic dataset (data/synthetic.h) as its users see it: datasets are written once for the
// suite, then
//   - the answers and captions are checked against the decoded videos (data/video_decoder.h):
//     each frame's objects are found as connected regions that differ from the background, their
//     colour named by rules written here from the colour words ("red": high R, low G and B, ...),
//     their shape by how much of the bounding box they fill (square ~1, disc ~pi/4, triangle ~1/2,
//     apex up), motion by the centroid's path, position by the cell the centroid is in, order by
//     the frame each colour first shows in, count by the number of regions;
//   - the manifests by data/manifest.h's reader and the loader's text path (data/conversation.h):
//     every word of every text one token of tokenizer.json, every question word known to
//     bert_vocab.txt;
//   - the split: question types balanced, train and test videos disjoint;
//   - determinism: the same options with another thread count give byte-identical files.
#include "data/synthetic.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "data/bert_tokenizer.h"
#include "data/conversation.h"
#include "data/manifest.h"
#include "data/qwen2_tokenizer.h"
#include "data/video_decoder.h"
#include "tests/support/messages.h"

namespace bvllm::data::synth {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

constexpr int64_t kTrain = 32, kTest = 32;  // 8 videos of each of the 4 scene kinds

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Datasets written once per test process: A (2 threads); B (A's options, 1 thread) and C
// (another seed) only for the test that compares them.
class Datasets {
 public:
  static Datasets& get() {
    static Datasets datasets;
    return datasets;
  }
  ~Datasets() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
  fs::path a;
  SynthSummary summary_a;
  int64_t progress_calls = 0, progress_last = 0;

  // A's options with another thread count, or another seed.
  fs::path same_options_one_thread() { return write("b", 7, 1); }
  fs::path other_seed() { return write("c", 8, 2); }

 private:
  Datasets() : root_(fs::temp_directory_path() / ("bvllm_synthetic_test_" + std::to_string(::getpid()))) {
    quiet_ffmpeg_log();
    a = root_ / "a";
    summary_a = write_synthetic_dataset(options(a, 7, 2), [&](int64_t done, int64_t total) {
      ++progress_calls;
      progress_last = done;
      EXPECT_EQ(total, kTrain + kTest);
    });
  }
  static SynthOptions options(const fs::path& out, uint64_t seed, int threads) {
    return {.out = out.string(), .train = kTrain, .test = kTest, .seed = seed, .threads = threads};
  }
  fs::path write(const std::string& name, uint64_t seed, int threads) {
    const fs::path out = root_ / name;
    if (!fs::exists(out)) write_synthetic_dataset(options(out, seed, threads));
    return out;
  }
  fs::path root_;
};

// --- what the pixels show ------------------------------------------------------------------------

struct Region {
  int64_t area = 0;
  int x0 = 1 << 30, y0 = 1 << 30, x1 = -1, y1 = -1;  // bounding box, inclusive
  double cx = 0, cy = 0;                             // centroid
  std::string colour;                                // a colour word, or "?"
  std::string shape;                                 // a shape word, or "?"
};

// The colour words by what they mean, not by the generator's table.
std::string colour_word(double r, double g, double b) {
  if (r > 180 && g > 180 && b > 180) return "white";
  if (r > 160 && g > 160 && b < 110) return "yellow";
  if (r > 150 && g < 110 && b < 110) return "red";
  if (g > 140 && r < 110 && b < 130) return "green";
  if (b > 160 && r < 110 && g < 150) return "blue";
  if (r > 110 && b > 150 && g < 110) return "purple";
  return "?";
}

// Connected regions (4-neighbours) of pixels far from the dark grey background, with at least 20
// pixels; colours from the pixels whose four neighbours are in the region too (away from the
// codec's softened edges).
std::vector<Region> regions(const Tensor& rgb) {
  const int h = static_cast<int>(rgb.size(0)), w = static_cast<int>(rgb.size(1));
  const Tensor packed = rgb.contiguous();
  const uint8_t* p = packed.data<uint8_t>();
  auto at = [&](int x, int y, int c) { return int{p[(static_cast<size_t>(y) * w + x) * 3 + static_cast<size_t>(c)]}; };
  std::vector<int> label(static_cast<size_t>(w) * h, -1);
  auto on = [&](int x, int y) {
    return std::abs(at(x, y, 0) - 40) + std::abs(at(x, y, 1) - 40) + std::abs(at(x, y, 2) - 40) > 90;
  };
  std::vector<Region> found;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      if (!on(x, y) || label[static_cast<size_t>(y * w + x)] >= 0) continue;
      const int id = static_cast<int>(found.size());
      std::vector<std::pair<int, int>> stack = {{x, y}}, pixels;
      label[static_cast<size_t>(y * w + x)] = id;
      while (!stack.empty()) {
        const auto [px, py] = stack.back();
        stack.pop_back();
        pixels.emplace_back(px, py);
        for (const auto& [dx, dy] : {std::pair{1, 0}, std::pair{-1, 0}, std::pair{0, 1}, std::pair{0, -1}}) {
          const int nx = px + dx, ny = py + dy;
          if (nx < 0 || ny < 0 || nx >= w || ny >= h || label[static_cast<size_t>(ny * w + nx)] >= 0 || !on(nx, ny))
            continue;
          label[static_cast<size_t>(ny * w + nx)] = id;
          stack.emplace_back(nx, ny);
        }
      }
      Region r;
      r.area = static_cast<int64_t>(pixels.size());
      double sum[3] = {0, 0, 0};
      int64_t inner = 0;
      for (const auto& [px, py] : pixels) {
        r.x0 = std::min(r.x0, px), r.x1 = std::max(r.x1, px), r.y0 = std::min(r.y0, py), r.y1 = std::max(r.y1, py);
        r.cx += px + 0.5, r.cy += py + 0.5;
        auto same = [&](int nx, int ny) {
          return nx >= 0 && ny >= 0 && nx < w && ny < h && label[static_cast<size_t>(ny * w + nx)] == id;
        };
        if (same(px + 1, py) && same(px - 1, py) && same(px, py + 1) && same(px, py - 1)) {
          for (int c = 0; c < 3; ++c) sum[c] += at(px, py, c);
          ++inner;
        }
      }
      r.cx /= static_cast<double>(r.area), r.cy /= static_cast<double>(r.area);
      r.colour = inner > 0 ? colour_word(sum[0] / inner, sum[1] / inner, sum[2] / inner) : "?";
      // Shape: the share of the bounding box filled, and for a triangle the apex on top.
      const double box = static_cast<double>(r.x1 - r.x0 + 1) * (r.y1 - r.y0 + 1);
      const double fill = static_cast<double>(r.area) / box;
      auto row_width = [&](int y) {
        int n = 0;
        for (const auto& [px, py] : pixels) n += py == y;
        return n;
      };
      const bool apex_up = row_width(r.y0 + 1) * 3 < row_width(r.y1 - 1);
      r.shape = fill > 0.9                     ? "square"
                : (fill > 0.68 && fill < 0.88) ? "circle"
                : (fill < 0.62 && apex_up)     ? "triangle"
                                               : "?";
      if (r.area >= 20) found.push_back(r);
    }
  return found;
}

// The frames of a dataset video at its own rate, as decoded pixels.
std::vector<Tensor> frames_of(const fs::path& path) {
  const DecodedVideo video = decode_video(path.string(), {.fps = 8, .threads = 1, .short_side = 0});
  std::vector<Tensor> frames;
  for (const VideoFrame& f : video.frames) frames.push_back(f.rgb);
  EXPECT_EQ(frames.size(), 64u) << path;
  return frames;
}

// Everything the questions ask, read from the pixels.
struct Observed {
  std::vector<Region> first, last;        // regions of the first and the last frame
  std::map<std::string, int> first_seen;  // colour -> first frame it shows in
};

Observed observe(const fs::path& path) {
  const std::vector<Tensor> frames = frames_of(path);
  Observed o;
  for (size_t f = 0; f < frames.size(); ++f) {
    const std::vector<Region> found = regions(frames[f]);
    for (const Region& r : found) o.first_seen.emplace(r.colour, static_cast<int>(f));
    if (f == 0) o.first = found;
    if (f + 1 == frames.size()) o.last = found;
  }
  return o;
}

// Where a region's centroid is in the 3x3 grid of a 96-px frame, named as the texts name it
// (written here from the words' meaning, not from the generator's table).
std::string cell_word(const Region& r) {
  const int col = std::clamp(static_cast<int>(r.cx / 32), 0, 2), row = std::clamp(static_cast<int>(r.cy / 32), 0, 2);
  const char* rows[] = {"top", "", "bottom"};
  const char* cols[] = {"left", "", "right"};
  if (row == 1 && col == 1) return "centre";
  if (row == 1) return cols[col];
  if (col == 1) return rows[row];
  return std::string(rows[row]) + " " + cols[col];
}

std::string direction_word(const Region& from, const Region& to) {
  const double dx = to.cx - from.cx, dy = to.cy - from.cy;
  if (std::abs(dx) > std::abs(dy)) return dx < 0 ? "left" : "right";
  return dy < 0 ? "up" : "down";
}

const std::vector<std::string> kNumbers = {"zero", "one", "two", "three", "four"};

// --- the manifests -------------------------------------------------------------------------------

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(read_bytes(path)); }

std::string gpt_of(const nlohmann::json& record) { return record["conversations"][1]["value"]; }
std::string question_of(const nlohmann::json& record) {
  const std::string human = record["conversations"][0]["value"];
  EXPECT_TRUE(human.starts_with("<video>\n")) << human;
  return human.substr(8);
}

TEST(Synthetic, AnswersMatchTheDecodedVideos) {
  const Datasets& d = Datasets::get();
  const nlohmann::json test = read_json(d.a / "test.json");
  ASSERT_EQ(test.size(), static_cast<size_t>(kTest / 4 * 6));  // 3 questions of a single video, 1 of the others
  std::map<std::string, Observed> seen;
  for (const nlohmann::json& r : test) {
    const std::string video = r["video"], type = r["type"], answer = r["answer"];
    SCOPED_TRACE(r.dump());
    EXPECT_EQ(answer, gpt_of(r));
    if (!seen.count(video)) seen[video] = observe(d.a / video);
    const Observed& o = seen[video];
    if (type == "colour" || type == "shape" || type == "motion") {
      ASSERT_EQ(o.first.size(), 1u);
      ASSERT_EQ(o.last.size(), 1u);
      EXPECT_EQ(question_of(r), type == "colour"  ? "What colour is the object?"
                                : type == "shape" ? "What shape is the object?"
                                                  : "Which direction does the object move?");
      if (type == "colour") {
        EXPECT_EQ(o.first[0].colour, answer);
      }
      if (type == "shape") {
        EXPECT_EQ(o.first[0].shape, answer);
      }
      if (type == "motion") {
        EXPECT_EQ(direction_word(o.first[0], o.last[0]), answer);
        // Across the frame: the centroid travels more than a third of it.
        EXPECT_GT(std::hypot(o.last[0].cx - o.first[0].cx, o.last[0].cy - o.first[0].cy), 96.0 / 3);
      }
    } else if (type == "order") {
      std::smatch m;
      const std::string q = question_of(r);
      ASSERT_TRUE(
          std::regex_match(q, m, std::regex("Which object appears first, the (\\w+) one or the (\\w+) one\\?")));
      const std::string other = m[1] == answer ? m[2] : m[1];
      ASSERT_TRUE(m[1] == answer || m[2] == answer);
      ASSERT_TRUE(o.first_seen.count(answer) && o.first_seen.count(other));
      EXPECT_TRUE(o.first.empty()) << "nothing shows at the start";
      EXPECT_EQ(o.last.size(), 2u);
      // Frames at 8 fps: the first shows at 2 s +- 0.25, the second at 4 s +- 0.25.
      EXPECT_GE(o.first_seen.at(answer), 14);
      EXPECT_LE(o.first_seen.at(answer), 18);
      EXPECT_GE(o.first_seen.at(other), 30);
      EXPECT_LE(o.first_seen.at(other), 34);
    } else if (type == "position") {
      EXPECT_EQ(question_of(r), "Where is the object?");
      ASSERT_EQ(o.first.size(), 1u);
      ASSERT_EQ(o.last.size(), 1u);
      EXPECT_EQ(cell_word(o.first[0]), answer);
      EXPECT_LT(std::hypot(o.last[0].cx - o.first[0].cx, o.last[0].cy - o.first[0].cy), 1.0) << "it stays";
    } else if (type == "count") {
      EXPECT_EQ(question_of(r), "How many objects are there?");
      ASSERT_GE(o.last.size(), 1u);
      ASSERT_LE(o.last.size(), 4u);
      EXPECT_EQ(kNumbers[o.last.size()], answer);
      EXPECT_EQ(o.first.size(), o.last.size()) << "count scenes are static";
    } else {
      ADD_FAILURE() << "unknown type " << type;
    }
  }
}

TEST(Synthetic, CaptionsMatchTheDecodedVideos) {
  const Datasets& d = Datasets::get();
  const nlohmann::json stage1 = read_json(d.a / "stage1.json");
  ASSERT_EQ(stage1.size(), static_cast<size_t>(kTrain));
  const std::regex single("a (\\w+) (\\w+) moves (\\w+)\\.");
  const std::regex placed("a (\\w+) (\\w+) at the ([a-z ]+)\\.");
  const std::regex order("a (\\w+) (\\w+) appears, then a (\\w+) (\\w+)\\.");
  const std::regex count_head("(\\w+) objects?: (.*)\\.");
  const std::regex phrase("a (\\w+) (\\w+)");
  std::map<std::string, int> kinds;
  for (size_t i = 0; i < 16; ++i) {  // the first 16 train videos (4 of each kind)
    const nlohmann::json& r = stage1[i];
    SCOPED_TRACE(r.dump());
    EXPECT_EQ(question_of(r), "Describe the video.");
    const std::string caption = gpt_of(r);
    const Observed o = observe(d.a / std::string(r["video"]));
    std::smatch m;
    if (std::regex_match(caption, m, single)) {
      ++kinds["single"];
      ASSERT_EQ(o.first.size(), 1u);
      EXPECT_EQ(o.first[0].colour, m[1]);
      EXPECT_EQ(o.first[0].shape, m[2]);
      EXPECT_EQ(direction_word(o.first[0], o.last[0]), m[3]);
    } else if (std::regex_match(caption, m, placed)) {
      ++kinds["static"];
      ASSERT_EQ(o.first.size(), 1u);
      EXPECT_EQ(o.first[0].colour, m[1]);
      EXPECT_EQ(o.first[0].shape, m[2]);
      EXPECT_EQ(cell_word(o.first[0]), m[3]);
    } else if (std::regex_match(caption, m, order)) {
      ++kinds["order"];
      ASSERT_EQ(o.last.size(), 2u);
      ASSERT_TRUE(o.first_seen.count(m[1]) && o.first_seen.count(m[3]));
      EXPECT_LT(o.first_seen.at(m[1]), o.first_seen.at(m[3]));
      std::multiset<std::string> want = {m[1].str() + " " + m[2].str(), m[3].str() + " " + m[4].str()}, got;
      for (const Region& region : o.last) got.insert(region.colour + " " + region.shape);
      EXPECT_EQ(got, want);
    } else if (std::regex_match(caption, m, count_head)) {
      ++kinds["count"];
      const std::string list = m[2];
      std::multiset<std::string> want, got;
      for (auto it = std::sregex_iterator(list.begin(), list.end(), phrase); it != std::sregex_iterator(); ++it)
        want.insert((*it)[1].str() + " " + (*it)[2].str());
      for (const Region& region : o.last) got.insert(region.colour + " " + region.shape);
      EXPECT_EQ(got, want);
      EXPECT_EQ(kNumbers[want.size()], m[1]);
    } else {
      ADD_FAILURE() << "caption of no known form: " << caption;
    }
  }
  EXPECT_EQ(kinds, (std::map<std::string, int>{{"count", 4}, {"order", 4}, {"single", 4}, {"static", 4}}));
}

TEST(Synthetic, ManifestsReadAndQuestionTypesAreBalanced) {
  const Datasets& d = Datasets::get();
  const std::vector<ManifestEntry> stage1 = read_manifest((d.a / "stage1.json").string());
  const std::vector<ManifestEntry> stage2 = read_manifest((d.a / "stage2.json").string());
  const std::vector<ManifestEntry> test = read_manifest((d.a / "test.json").string());
  EXPECT_EQ(stage1.size(), static_cast<size_t>(kTrain));
  EXPECT_EQ(stage2.size(), static_cast<size_t>(kTrain / 4 * 6));  // 3 + 1 + 1 + 1 questions per 4 videos
  EXPECT_EQ(test.size(), static_cast<size_t>(kTest / 4 * 6));
  std::set<std::string> ids;
  for (const auto* entries : {&stage1, &stage2, &test})
    for (const ManifestEntry& e : *entries) {
      EXPECT_EQ(e.kind, Sample::VIDEO);
      ASSERT_EQ(e.turns.size(), 2u);
      EXPECT_EQ(e.turns[0].from(), "human");
      EXPECT_TRUE(e.turns[0].value().starts_with("<video>\n"));
      EXPECT_EQ(e.turns[1].from(), "gpt");
      EXPECT_TRUE(fs::is_regular_file(d.a / e.media)) << e.media;
      if (entries != &stage1) {
        EXPECT_TRUE(ids.insert(e.id).second) << "duplicate id " << e.id;
      }
    }
  // Every type the same number of questions, in each split.
  for (const char* file : {"stage2.json", "test.json"}) {
    std::map<std::string, int64_t> per_type;
    for (const nlohmann::json& r : read_json(d.a / file)) {
      const std::string id = r["id"];
      ++per_type[id.substr(id.rfind('-') + 1)];
    }
    const int64_t videos = std::string(file) == "test.json" ? kTest : kTrain;
    EXPECT_EQ(per_type, (std::map<std::string, int64_t>{{"colour", videos / 4},
                                                        {"count", videos / 4},
                                                        {"motion", videos / 4},
                                                        {"order", videos / 4},
                                                        {"position", videos / 4},
                                                        {"shape", videos / 4}}))
        << file;
    EXPECT_EQ(per_type, std::string(file) == "test.json" ? d.summary_a.test_questions : d.summary_a.train_questions);
  }
  EXPECT_EQ(d.summary_a.captions, kTrain);
  EXPECT_EQ(d.progress_calls, kTrain + kTest);
  EXPECT_EQ(d.progress_last, kTrain + kTest);
  EXPECT_CONTAINS(read_bytes(d.a / "README.txt"),
                  "stage2.json questions: colour 8 shape 8 motion 8 order 8 count 8 position 8");
}

TEST(Synthetic, TrainAndTestVideosAreDisjoint) {
  const Datasets& d = Datasets::get();
  std::set<std::string> train, test;
  for (const char* file : {"stage1.json", "stage2.json"})
    for (const ManifestEntry& e : read_manifest((d.a / file).string())) train.insert(e.media);
  for (const ManifestEntry& e : read_manifest((d.a / "test.json").string())) test.insert(e.media);
  EXPECT_EQ(train.size(), static_cast<size_t>(kTrain));
  EXPECT_EQ(test.size(), static_cast<size_t>(kTest));
  std::set<std::string> train_bytes;
  for (const std::string& v : train) train_bytes.insert(read_bytes(d.a / v));
  for (const std::string& v : test) {
    EXPECT_FALSE(train.count(v)) << v;
    EXPECT_FALSE(train_bytes.count(read_bytes(d.a / v))) << v << " has the bytes of a train video";
  }
  // Nothing else in videos/ (no leftover partial files).
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(d.a / "videos")) {
    ++files;
    EXPECT_EQ(entry.path().extension(), ".mp4");
    EXPECT_EQ(entry.path().string().find(".part"), std::string::npos) << entry.path();
  }
  EXPECT_EQ(files, static_cast<size_t>(kTrain + kTest));
}

TEST(Synthetic, SameOptionsGiveTheSameBytesWhateverTheThreads) {
  Datasets& d = Datasets::get();
  const fs::path b = d.same_options_one_thread(), c = d.other_seed();
  size_t compared = 0;
  for (const auto& entry : fs::recursive_directory_iterator(d.a)) {
    if (!entry.is_regular_file()) continue;
    const fs::path relative = fs::relative(entry.path(), d.a);
    ASSERT_TRUE(fs::exists(b / relative)) << relative;
    EXPECT_TRUE(read_bytes(entry.path()) == read_bytes(b / relative)) << relative << " differs";
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<size_t>(kTrain + kTest + 6));  // videos + 6 text files
  // Another seed, other scenes (the vocabularies stay the same).
  EXPECT_NE(read_bytes(d.a / "stage2.json"), read_bytes(c / "stage2.json"));
  EXPECT_NE(read_bytes(d.a / "videos/train-00000.mp4"), read_bytes(c / "videos/train-00000.mp4"));
  EXPECT_EQ(read_bytes(d.a / "tokenizer.json"), read_bytes(c / "tokenizer.json"));
}

// The number of words and punctuation marks in ASCII text: what one token each should give.
size_t words_and_marks(const std::string& text) {
  size_t n = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool letter = std::isalpha(static_cast<unsigned char>(text[i])) != 0;
    if (std::ispunct(static_cast<unsigned char>(text[i]))) ++n;
    if (letter && (i == 0 || !std::isalpha(static_cast<unsigned char>(text[i - 1])))) ++n;
  }
  return n;
}

TEST(Synthetic, EveryWordIsOneTokenOnTheLoadersTextPath) {
  const Datasets& d = Datasets::get();
  const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::load((d.a / "tokenizer.json").string());
  EXPECT_LE(tokenizer.vocab_size(), 512) << "recipes/tiny_stage*.pb have a 512-id LLM vocabulary";
  EXPECT_EQ(tokenizer.vocab_size(), d.summary_a.tokenizer_ids);
  const BertTokenizer bert = BertTokenizer::from_vocab_file((d.a / "bert_vocab.txt").string());
  EXPECT_EQ(bert.vocab_size(), d.summary_a.bert_tokens + 1);
  for (const int stage : {1, 2}) {
    const char* files[] = {stage == 1 ? "stage1.json" : "stage2.json", stage == 1 ? nullptr : "test.json"};
    for (const char* file : files) {
      if (file == nullptr) continue;
      for (const ManifestEntry& e : read_manifest((d.a / file).string())) {
        Sample sample;
        sample.set_id(e.id);
        sample.set_kind(e.kind);
        for (const Turn& t : e.turns) *sample.add_conversations() = t;
        const SampleText text = tokenize_sample(sample, tokenizer, {.stage = stage});
        const std::string question = e.turns[0].value().substr(8), answer = e.turns[1].value();
        // Stage 1: <video> "\n" question answer. Stage 2: the system turn (<|im_start|> system
        // "\n" You are a helpful assistant . <|im_end|> "\n": 11), <|im_start|> user "\n" <video>
        // "\n" question <|im_end|> "\n" <|im_start|> assistant "\n" answer <|im_end|> "\n".
        const size_t want = stage == 1 ? 2 + words_and_marks(question) + words_and_marks(answer)
                                       : 11 + 5 + words_and_marks(question) + 7 + words_and_marks(answer);
        EXPECT_EQ(text.ids.size(), want) << e.id << ": " << question << " / " << answer;
        if (stage == 2) {
          EXPECT_EQ(tokenizer.encode(answer).size(), words_and_marks(answer)) << answer;  // "top left": 2
        }
        // The Q-Formers' question: no word unknown to the BERT vocab.
        EXPECT_EQ(text.question, question);
        const std::vector<int32_t> bert_ids = bert.tokenize(question);
        EXPECT_EQ(bert_ids.size(), words_and_marks(question)) << question;
        EXPECT_EQ(std::count(bert_ids.begin(), bert_ids.end(), bert.unk_id()), 0) << question;
      }
    }
  }
}

TEST(Synthetic, ScenesFitTheFrame) {
  const VideoSpec spec;
  for (uint64_t seed = 0; seed < 300; ++seed)
    for (const SceneKind kind : {SceneKind::Single, SceneKind::Static, SceneKind::Order, SceneKind::Count}) {
      const Scene scene = sample_scene(kind, seed, spec);
      SCOPED_TRACE(caption(scene));
      const double last_s = (spec.frames() - 1.0) / spec.fps;
      for (size_t i = 0; i < scene.objects.size(); ++i) {
        const SceneObject& o = scene.objects[i];
        EXPECT_GE(o.extent, spec.size * 0.22);
        EXPECT_LE(o.extent, spec.size / 3.0);
        for (const double t : {0.0, last_s}) {  // the whole shape inside the frame at both ends
          const double x = o.x + o.vx * t, y = o.y + o.vy * t;
          EXPECT_GE(std::min(x, y) - o.extent / 2, 0.0);
          EXPECT_LE(std::max(x, y) + o.extent / 2, spec.size);
        }
        for (size_t j = 0; j < i; ++j) {  // static objects never overlap (bounding squares apart)
          const SceneObject& p = scene.objects[j];
          EXPECT_TRUE(std::abs(o.x - p.x) >= (o.extent + p.extent) / 2 ||
                      std::abs(o.y - p.y) >= (o.extent + p.extent) / 2);
        }
      }
      if (kind == SceneKind::Single) {
        EXPECT_GT(std::hypot(scene.objects[0].vx, scene.objects[0].vy) * last_s, spec.size / 3.0);
      }
      if (kind == SceneKind::Order) {
        EXPECT_NE(scene.objects[0].colour, scene.objects[1].colour);
      }
    }
}

TEST(Synthetic, InvalidOptionsAreRefused) {
  EXPECT_CONTAINS(error_of([] { write_synthetic_dataset({.out = ""}); }), "output directory is empty");
  EXPECT_CONTAINS(error_of([] { write_synthetic_dataset({.out = "/tmp/x", .train = 0, .test = 0}); }),
                  "at least one video");
  EXPECT_CONTAINS(error_of([] { sample_scene(SceneKind::Single, 0, {.size = 31}); }), "size 31");
  EXPECT_CONTAINS(error_of([] { sample_scene(SceneKind::Single, 0, {.size = 96, .seconds = 0}); }), "seconds 0");
}

}  // namespace
}  // namespace bvllm::data::synth
