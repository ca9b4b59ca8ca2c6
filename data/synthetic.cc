#include "data/synthetic.h"

#include <glog/logging.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "data/chat_template.h"
#include "data/tiny_vocab.h"
#include "data/video_encoder.h"
#include "runtime/error.h"

namespace bvllm::data::synth {
namespace {

namespace fs = std::filesystem;

// SplitMix64 (Steele et al. 2014): a fixed generator of our own, so scenes are the same on every
// platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // [0, n); the modulo bias (below n / 2^64) does not matter here.
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }

 private:
  uint64_t state_;
};

// The generator seed of one video: FNV-1a of its id, mixed with the dataset seed.
uint64_t video_seed(uint64_t seed, std::string_view id) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : id) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  Rng mix(seed ^ h);
  return mix.next();
}

void check_spec(const VideoSpec& spec) {
  BVLLM_REQUIRE(spec.size >= 32 && spec.size % 2 == 0, "synthetic video: size ", spec.size,
                " must be even and >= 32 pixels");
  BVLLM_REQUIRE(spec.seconds >= 1, "synthetic video: seconds ", spec.seconds, " must be >= 1");
  BVLLM_REQUIRE(spec.fps >= 1, "synthetic video: fps ", spec.fps, " must be >= 1");
}

// `count` distinct cells of the 3x3 grid, in reading order.
std::vector<int> pick_cells(Rng& rng, int count) {
  std::array<int, 9> cells = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  for (int i = 0; i < count; ++i)
    std::swap(cells[static_cast<size_t>(i)], cells[static_cast<size_t>(i + rng.below(9 - i))]);
  std::vector<int> picked(cells.begin(), cells.begin() + count);
  std::sort(picked.begin(), picked.end());
  return picked;
}

// A static object inside grid cell `cell` (cells of size / 3, so objects in different cells never
// touch).
SceneObject static_object(Rng& rng, int cell, Colour colour, const VideoSpec& spec) {
  const double side = spec.size / 3.0;
  SceneObject o;
  o.colour = colour;
  o.cell = cell;
  o.shape = static_cast<Shape>(rng.below(kShapes));
  o.extent = spec.size * rng.uniform(0.22, 0.30);
  const double slack = side - o.extent - 2;  // at least one pixel to each cell border
  o.x = (cell % 3) * side + 1 + o.extent / 2 + slack * rng.uniform();
  o.y = (cell / 3) * side + 1 + o.extent / 2 + slack * rng.uniform();
  return o;
}

bool inside(const SceneObject& o, double dx, double dy) {
  const double h = o.extent / 2;
  switch (o.shape) {
    case Shape::Circle: return dx * dx + dy * dy <= h * h;
    case Shape::Square: return std::abs(dx) <= 0.85 * h && std::abs(dy) <= 0.85 * h;
    case Shape::Triangle:  // apex at the top (dy = -h), base at dy = +h, base width = extent
      return dy >= -h && dy <= h && std::abs(dx) <= (dy + h) / 2;
  }
  return false;
}

std::string object_phrase(const SceneObject& o) { return str_cat("a ", name(o.colour), " ", name(o.shape)); }

}  // namespace

std::string_view name(Colour colour) {
  static constexpr std::string_view kNames[] = {"red", "green", "blue", "yellow", "white", "purple"};
  return kNames[static_cast<int>(colour)];
}
std::string_view name(Shape shape) {
  static constexpr std::string_view kNames[] = {"circle", "square", "triangle"};
  return kNames[static_cast<int>(shape)];
}
std::string_view name(Direction direction) {
  static constexpr std::string_view kNames[] = {"left", "right", "up", "down"};
  return kNames[static_cast<int>(direction)];
}
std::string_view name(SceneKind kind) {
  static constexpr std::string_view kNames[] = {"single", "static", "order", "count"};
  return kNames[static_cast<int>(kind)];
}
std::string_view name(QuestionType type) {
  static constexpr std::string_view kNames[] = {"colour", "shape", "motion", "order", "count", "position"};
  return kNames[static_cast<int>(type)];
}
std::string_view cell_name(int cell) {
  static constexpr std::string_view kNames[] = {"top left", "top",         "top right", "left",        "centre",
                                                "right",    "bottom left", "bottom",    "bottom right"};
  CHECK(cell >= 0 && cell < kCells) << "cell " << cell;
  return kNames[cell];
}
std::string_view count_word(int n) {
  static constexpr std::string_view kNames[] = {"one", "two", "three", "four"};
  CHECK(n >= 1 && n <= kMaxCount) << "count " << n;
  return kNames[n - 1];
}

std::array<uint8_t, 3> rgb(Colour colour) {
  // Far apart in RGB (the closest pair, white and yellow, differ by 200 in blue) and from the
  // background (40, 40, 40), and inside the limited-range YUV gamut so yuv420p keeps them.
  static constexpr std::array<uint8_t, 3> kRgb[] = {{230, 40, 40},  {40, 200, 60},   {50, 90, 240},
                                                    {235, 220, 40}, {240, 240, 240}, {170, 60, 220}};
  return kRgb[static_cast<int>(colour)];
}

Scene sample_scene(SceneKind kind, uint64_t seed, const VideoSpec& spec) {
  check_spec(spec);
  Rng rng(seed);
  Scene scene;
  scene.kind = kind;
  const double size = spec.size;
  const double duration = spec.seconds;
  switch (kind) {
    case SceneKind::Single: {
      SceneObject o;
      o.colour = static_cast<Colour>(rng.below(kColours));
      o.shape = static_cast<Shape>(rng.below(kShapes));
      o.extent = size * rng.uniform(0.25, 1.0 / 3.0);
      scene.direction = static_cast<Direction>(rng.below(kDirections));
      // From one margin at the first frame to the other at the last, at constant speed.
      const double margin = o.extent / 2 + 2;
      const double across = rng.uniform(margin, size - margin);
      const double last_s = static_cast<double>(spec.frames() - 1) / spec.fps;
      const double speed = last_s > 0 ? (size - 2 * margin) / last_s : 0;
      switch (scene.direction) {
        case Direction::Left: o.x = size - margin, o.y = across, o.vx = -speed; break;
        case Direction::Right: o.x = margin, o.y = across, o.vx = speed; break;
        case Direction::Up: o.x = across, o.y = size - margin, o.vy = -speed; break;
        case Direction::Down: o.x = across, o.y = margin, o.vy = speed; break;
      }
      scene.objects.push_back(o);
      break;
    }
    case SceneKind::Static: {
      const int cell = rng.below(kCells);
      scene.objects.push_back(static_object(rng, cell, static_cast<Colour>(rng.below(kColours)), spec));
      break;
    }
    case SceneKind::Order: {
      const auto first = static_cast<Colour>(rng.below(kColours));
      auto second = static_cast<Colour>(rng.below(kColours - 1));
      if (second >= first) second = static_cast<Colour>(static_cast<int>(second) + 1);
      const std::vector<int> cells = pick_cells(rng, 2);
      const bool swap_cells = rng.below(2) == 1;  // which of the two cells the first one takes
      scene.objects.push_back(static_object(rng, cells[swap_cells ? 1 : 0], first, spec));
      scene.objects.push_back(static_object(rng, cells[swap_cells ? 0 : 1], second, spec));
      scene.objects[0].appear_s = duration * (0.25 + rng.uniform(-1, 1) / 32);
      scene.objects[1].appear_s = duration * (0.5 + rng.uniform(-1, 1) / 32);
      scene.first_mentioned_first = rng.below(2) == 0;
      break;
    }
    case SceneKind::Count: {
      const int count = 1 + rng.below(kMaxCount);
      for (int cell : pick_cells(rng, count))
        scene.objects.push_back(static_object(rng, cell, static_cast<Colour>(rng.below(kColours)), spec));
      break;
    }
  }
  return scene;
}

void draw_frame(const Scene& scene, const VideoSpec& spec, int64_t index, std::span<uint8_t> rgb_out) {
  const int n = spec.size;
  CHECK_EQ(rgb_out.size(), static_cast<size_t>(n) * n * 3) << "frame buffer";
  for (size_t i = 0; i < rgb_out.size(); i += 3) std::copy(kBackground.begin(), kBackground.end(), &rgb_out[i]);
  const double t = static_cast<double>(index) / spec.fps;
  for (const SceneObject& o : scene.objects) {
    if (t < o.appear_s) continue;
    const double cx = o.x + o.vx * t, cy = o.y + o.vy * t;
    const double h = o.extent / 2;
    const int x0 = std::max(0, static_cast<int>(std::floor(cx - h)));
    const int x1 = std::min(n - 1, static_cast<int>(std::ceil(cx + h)));
    const int y0 = std::max(0, static_cast<int>(std::floor(cy - h)));
    const int y1 = std::min(n - 1, static_cast<int>(std::ceil(cy + h)));
    const std::array<uint8_t, 3> colour = rgb(o.colour);
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x)
        if (inside(o, x + 0.5 - cx, y + 0.5 - cy))
          std::copy(colour.begin(), colour.end(), &rgb_out[(static_cast<size_t>(y) * n + x) * 3]);
  }
}

std::string caption(const Scene& scene) {
  const std::vector<SceneObject>& objects = scene.objects;
  switch (scene.kind) {
    case SceneKind::Single: return str_cat(object_phrase(objects[0]), " moves ", name(scene.direction), ".");
    case SceneKind::Static: return str_cat(object_phrase(objects[0]), " at the ", cell_name(objects[0].cell), ".");
    case SceneKind::Order: return str_cat(object_phrase(objects[0]), " appears, then ", object_phrase(objects[1]), ".");
    case SceneKind::Count: {
      const int count = static_cast<int>(objects.size());
      std::string text = str_cat(count_word(count), count == 1 ? " object: " : " objects: ");
      for (int i = 0; i < count; ++i) {
        if (i > 0) text += i + 1 == count ? " and " : ", ";
        text += object_phrase(objects[static_cast<size_t>(i)]);
      }
      return text + ".";
    }
  }
  return {};
}

std::vector<Question> questions(const Scene& scene) {
  const std::vector<SceneObject>& objects = scene.objects;
  switch (scene.kind) {
    case SceneKind::Single:
      return {{QuestionType::Colour, "What colour is the object?", std::string(name(objects[0].colour))},
              {QuestionType::Shape, "What shape is the object?", std::string(name(objects[0].shape))},
              {QuestionType::Motion, "Which direction does the object move?", std::string(name(scene.direction))}};
    case SceneKind::Static:
      return {{QuestionType::Position, "Where is the object?", std::string(cell_name(objects[0].cell))}};
    case SceneKind::Order: {
      const std::string_view first = name(objects[0].colour), second = name(objects[1].colour);
      const std::string_view a = scene.first_mentioned_first ? first : second;
      const std::string_view b = scene.first_mentioned_first ? second : first;
      return {{QuestionType::Order, str_cat("Which object appears first, the ", a, " one or the ", b, " one?"),
               std::string(first)}};
    }
    case SceneKind::Count:
      return {{QuestionType::Count, "How many objects are there?",
               std::string(count_word(static_cast<int>(objects.size())))}};
  }
  return {};
}

namespace {

// Scenes whose texts together hold every word in every position: all single scenes, all ordered
// colour pairs with all shape pairs and both mention orders, and counts 1-4 with every colour and
// shape in every slot. Only the texts matter, so the geometry is left empty.
std::vector<Scene> covering_scenes() {
  std::vector<Scene> scenes;
  auto object = [](int colour, int shape, int cell = -1) {
    SceneObject o;
    o.colour = static_cast<Colour>(colour % kColours);
    o.shape = static_cast<Shape>(shape % kShapes);
    o.cell = cell;
    return o;
  };
  for (int c = 0; c < kColours; ++c)
    for (int s = 0; s < kShapes; ++s)
      for (int d = 0; d < kDirections; ++d) {
        Scene scene;
        scene.kind = SceneKind::Single;
        scene.objects = {object(c, s)};
        scene.direction = static_cast<Direction>(d);
        scenes.push_back(scene);
      }
  for (int c = 0; c < kColours; ++c)
    for (int s = 0; s < kShapes; ++s)
      for (int cell = 0; cell < kCells; ++cell) {
        Scene scene;
        scene.kind = SceneKind::Static;
        scene.objects = {object(c, s, cell)};
        scenes.push_back(scene);
      }
  for (int c1 = 0; c1 < kColours; ++c1)
    for (int c2 = 0; c2 < kColours; ++c2)
      for (int s = 0; s < kShapes * kShapes; ++s)
        if (c1 != c2) {
          Scene scene;
          scene.kind = SceneKind::Order;
          scene.objects = {object(c1, s / kShapes), object(c2, s % kShapes)};
          scene.first_mentioned_first = s % 2 == 0;
          scenes.push_back(scene);
        }
  for (int count = 1; count <= kMaxCount; ++count)
    for (int i = 0; i < kColours * kShapes; ++i) {
      Scene scene;
      scene.kind = SceneKind::Count;
      for (int k = 0; k < count; ++k) scene.objects.push_back(object(i + k, i / kColours + k));
      scenes.push_back(scene);
    }
  return scenes;
}

}  // namespace

std::vector<std::string> dataset_texts() {
  std::vector<std::string> texts = {std::string(kCaptionPrompt)};
  for (const Scene& scene : covering_scenes()) {
    texts.push_back(caption(scene));
    for (Question& q : questions(scene)) {
      texts.push_back(std::move(q.text));
      texts.push_back(std::move(q.answer));
    }
  }
  std::sort(texts.begin(), texts.end());
  texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
  return texts;
}

std::vector<std::string> vocabulary_texts() {
  std::vector<std::string> texts;
  // What encode_multimodal (data/conversation.h) tokenizes: the chunks between <video> tags.
  auto add_chunks = [&](const std::string& rendered) {
    constexpr std::string_view kTag = "<video>";
    size_t start = 0;
    for (size_t at; (at = rendered.find(kTag, start)) != std::string::npos; start = at + kTag.size())
      texts.push_back(rendered.substr(start, at - start));
    texts.push_back(rendered.substr(start));
  };
  const std::string prompt = str_cat("<video>\n", kCaptionPrompt);
  for (const Scene& scene : covering_scenes()) {
    add_chunks(render_plain(prompt, caption(scene), "<video>"));
    for (const Question& q : questions(scene)) {
      const ChatMessage messages[] = {{"user", str_cat("<video>\n", q.text)}, {"assistant", q.answer}};
      add_chunks(render_chatml(messages, /*add_generation_prompt=*/false));
    }
  }
  std::sort(texts.begin(), texts.end());
  texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
  return texts;
}

namespace {

struct Video {
  std::string id;
  bool test = false;
  Scene scene;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  BVLLM_REQUIRE(out, path.string(), ": cannot open for writing");
  out << text;
  out.close();
  BVLLM_REQUIRE(out, path.string(), ": cannot write");
}

// A JSON array with one record per line: readable, and diffable between runs.
std::string json_lines(const std::vector<nlohmann::ordered_json>& records) {
  std::string text = "[\n";
  for (size_t i = 0; i < records.size(); ++i) text += records[i].dump() + (i + 1 < records.size() ? ",\n" : "\n");
  return text + "]\n";
}

nlohmann::ordered_json record(const std::string& id, const std::string& video, const std::string& human,
                              const std::string& gpt) {
  return {{"id", id},
          {"video", video},
          {"conversations", {{{"from", "human"}, {"value", "<video>\n" + human}}, {{"from", "gpt"}, {"value", gpt}}}}};
}

void encode_one(const Video& video, const SynthOptions& options, const fs::path& dir) {
  const VideoSpec& spec = options.video;
  const fs::path final_path = dir / (video.id + ".mp4");
  const fs::path part_path = dir / (video.id + ".part.mp4");  // the extension names the container
  {
    VideoEncoder encoder(part_path.string(),
                         {.width = spec.size, .height = spec.size, .fps = spec.fps, .codec = options.codec});
    std::vector<uint8_t> frame(static_cast<size_t>(spec.size) * spec.size * 3);
    for (int64_t f = 0; f < spec.frames(); ++f) {
      draw_frame(video.scene, spec, f, frame);
      encoder.add_frame(frame);
    }
    encoder.finish();
  }
  fs::rename(part_path, final_path);
}

}  // namespace

SynthSummary write_synthetic_dataset(const SynthOptions& options, const SynthProgress& progress) {
  BVLLM_REQUIRE(!options.out.empty(), "synthetic dataset: the output directory is empty");
  BVLLM_REQUIRE(options.train >= 0 && options.test >= 0 && options.train + options.test >= 1,
                "synthetic dataset: train ", options.train, " and test ", options.test,
                " must be >= 0 with at least one video");
  BVLLM_REQUIRE(options.threads >= 0, "synthetic dataset: threads ", options.threads, " must be >= 0");
  check_spec(options.video);
  const fs::path out(options.out);
  const fs::path video_dir = out / "videos";
  std::error_code ec;
  fs::create_directories(video_dir, ec);
  BVLLM_REQUIRE(!ec, video_dir.string(), ": cannot create the directory: ", ec.message());

  SynthSummary summary;
  summary.codec = options.codec.empty() ? default_video_codec() : options.codec;
  summary.train_videos = options.train;
  summary.test_videos = options.test;

  // The scenes, and the manifests from them.
  const size_t digits = std::max<size_t>(5, std::to_string(std::max(options.train, options.test) - 1).size());
  auto make_id = [&](const char* split, int64_t i) {
    std::string number = std::to_string(i);
    return str_cat(split, "-", std::string(digits - std::min(digits, number.size()), '0'), number);
  };
  std::vector<Video> videos;
  std::vector<nlohmann::ordered_json> stage1, stage2, test;
  for (const bool is_test : {false, true}) {
    const int64_t n = is_test ? options.test : options.train;
    for (int64_t i = 0; i < n; ++i) {
      Video& video = videos.emplace_back();
      video.id = make_id(is_test ? "test" : "train", i);
      video.test = is_test;
      video.scene =
          sample_scene(static_cast<SceneKind>(i % kSceneKinds), video_seed(options.seed, video.id), options.video);
      const std::string path = "videos/" + video.id + ".mp4";
      if (!is_test) {
        stage1.push_back(record(video.id, path, std::string(kCaptionPrompt), caption(video.scene)));
        ++summary.captions;
      }
      for (const Question& q : questions(video.scene)) {
        const std::string type(name(q.type));
        nlohmann::ordered_json r = record(video.id + "-" + type, path, q.text, q.answer);
        if (is_test) {
          r["type"] = type;
          r["answer"] = q.answer;
          test.push_back(std::move(r));
          ++summary.test_questions[type];
        } else {
          stage2.push_back(std::move(r));
          ++summary.train_questions[type];
        }
      }
    }
  }

  // The videos, one encoder per thread.
  const int threads =
      std::max<int>(1, std::min<int64_t>(static_cast<int64_t>(videos.size()),
                                         options.threads > 0 ? options.threads : std::thread::hardware_concurrency()));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::exception_ptr error;
  int64_t done = 0;
  auto work = [&] {
    for (size_t i; !failed && (i = next++) < videos.size();) {
      try {
        encode_one(videos[i], options, video_dir);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
        return;
      }
      std::lock_guard lock(mutex);
      ++done;
      if (progress) progress(done, static_cast<int64_t>(videos.size()));
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);

  write_file(out / "stage1.json", json_lines(stage1));
  write_file(out / "stage2.json", json_lines(stage2));
  write_file(out / "test.json", json_lines(test));
  summary.tokenizer_ids = write_tiny_tokenizer((out / "tokenizer.json").string(), vocabulary_texts());
  summary.bert_tokens = write_tiny_bert_vocab((out / "bert_vocab.txt").string(), dataset_texts());

  std::string readme =
      str_cat("Synthetic video QA dataset written by bvllm_synth (data/synthetic.h).\n\n", "seed ", options.seed, ", ",
              options.video.size, "x", options.video.size, " px, ", options.video.seconds, " s at ", options.video.fps,
              " fps, codec ", summary.codec, "\n", "videos: ", summary.train_videos, " train, ", summary.test_videos,
              " test\n", "stage1.json: ", summary.captions, " captions\n");
  for (const auto* counts : {&summary.train_questions, &summary.test_questions}) {
    readme += counts == &summary.train_questions ? "stage2.json questions:" : "test.json questions:";
    for (int t = 0; t < kQuestionTypes; ++t) {
      const std::string type(name(static_cast<QuestionType>(t)));
      const auto it = counts->find(type);
      readme += str_cat(" ", type, " ", it == counts->end() ? 0 : it->second);
    }
    readme += "\n";
  }
  readme += str_cat("tokenizer.json: ", summary.tokenizer_ids, " ids; bert_vocab.txt: ", summary.bert_tokens,
                    " tokens (+ [DEC])\n");
  write_file(out / "README.txt", readme);
  return summary;
}

}  // namespace bvllm::data::synth
