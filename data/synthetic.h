// The synthetic video QA dataset of the main job (bvllm_synth): short videos of solid shapes on a
// dark grey background, drawn by this code, with captions for stage 1 and one-word answers to five
// kinds of questions for stage 2 and the held-out evaluation. Small enough that a tiny B-VLLM learns
// it on a CPU in minutes, and each question type needs a different part of the model: colour and
// shape one frame, motion direction and event order several frames in time order, count the
// spatial tokens.
//
// Scenes (sample_scene), on a size x size frame, seconds x fps frames:
//   Single: one object of random colour and shape moving in a straight line at constant speed
//           across the frame (left, right, up or down) from one edge margin at the first frame to
//           the other at the last. Questions: colour, shape, motion.
//   Order:  two static objects of different colours; the first appears at 1/4 of the video, the
//           second at 1/2 (each +-1/32 of the video). Question: which one appears first.
//   Count:  one to four static objects that never overlap. Question: how many.
// Objects are 1/4 to 1/3 of the frame (extent; 0.22-0.30 for static objects, which sit in cells of
// a 3x3 grid so they never overlap), so a 64 px model input still shows them at 14-21 px.
// Colours are six well-separated RGB values and the background is dark grey.
//
// A dataset (write_synthetic_dataset) has `train` and `test` videos, disjoint by construction (ids
// "train-NNNNN" and "test-NNNNN", each scene drawn from a generator seeded by (seed, id)), with
// the scene kinds in turn (video i has kind i % 3), so that each of the five question types gets
// the same number of questions (a Single video asks three). Everything is deterministic: the same
// options give byte-identical manifests and (with the same FFmpeg build) videos, whatever the
// thread count.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bvllm::data::synth {

enum class Colour : uint8_t { Red, Green, Blue, Yellow, White, Purple };
enum class Shape : uint8_t { Circle, Square, Triangle };
enum class Direction : uint8_t { Left, Right, Up, Down };
enum class SceneKind : uint8_t { Single, Static, Order, Count };
enum class QuestionType : uint8_t { Colour, Shape, Motion, Order, Count, Position };

inline constexpr int kColours = 6;
inline constexpr int kShapes = 3;
inline constexpr int kDirections = 4;
inline constexpr int kSceneKinds = 4;
inline constexpr int kQuestionTypes = 6;
inline constexpr int kMaxCount = 4;

// The names used in texts and in test.json's "type": "red", "circle", "left", "colour", ...
std::string_view name(Colour colour);
std::string_view name(Shape shape);
std::string_view name(Direction direction);
std::string_view name(SceneKind kind);  // "single", "static", "order", "count"
std::string_view name(QuestionType type);
// "one" .. "four".
std::string_view count_word(int n);
// The cells of the 3x3 grid that static objects sit in, in reading order: "top left", "top",
// "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right".
std::string_view cell_name(int cell);
inline constexpr int kCells = 9;

std::array<uint8_t, 3> rgb(Colour colour);
inline constexpr std::array<uint8_t, 3> kBackground = {40, 40, 40};

struct VideoSpec {
  int size = 96;    // frame width and height, pixels (even, >= 32)
  int seconds = 8;  // duration
  int fps = 8;
  int frames() const { return seconds * fps; }
};

struct SceneObject {
  Colour colour = Colour::Red;
  Shape shape = Shape::Circle;
  double extent = 0;      // side of the square the shape fills, pixels
  double x = 0, y = 0;    // centre at t = 0, pixels from the top-left corner (x right, y down)
  double vx = 0, vy = 0;  // pixels per second
  double appear_s = 0;    // hidden before this time
  int cell = -1;          // a static object's grid cell (cell_name); -1 for the moving one
};

struct Scene {
  SceneKind kind = SceneKind::Single;
  // Single: the moving object. Static: one object that stays in its cell. Order: the first to
  // appear, then the second. Count: 1-4 objects in reading order (top row first, left to right).
  std::vector<SceneObject> objects{};
  Direction direction = Direction::Left;  // Single only
  bool first_mentioned_first = true;      // Order: "the <first> one or the <second> one?"
};

// The scene of one video, from a generator seeded with `seed` (write_synthetic_dataset passes a
// hash of its seed and the video id). Throws bvllm::Error for an invalid spec.
Scene sample_scene(SceneKind kind, uint64_t seed, const VideoSpec& spec);

// Frame `index` (time index / fps) of `scene` into `rgb` (size * size * 3 bytes, packed RGB, rows
// top to bottom). A pixel belongs to a visible object when its centre is inside the shape: a disc,
// a square of side 0.85 extent, or an upward triangle of base and height = extent.
void draw_frame(const Scene& scene, const VideoSpec& spec, int64_t index, std::span<uint8_t> rgb);

// Stage-1 caption: "a red circle moves left." / "a red circle at the top left." /
// "a red square appears, then a blue circle." /
// "three objects: a red circle, a blue square and a green triangle."
std::string caption(const Scene& scene);

inline constexpr std::string_view kCaptionPrompt = "Describe the video.";

struct Question {
  QuestionType type = QuestionType::Colour;
  std::string text{};    // "What colour is the object?"
  std::string answer{};  // "red"
};

// Single: colour, shape and motion; Static: position; Order: order; Count: count.
std::vector<Question> questions(const Scene& scene);

// Every text the dataset can hold, covering all words in every position they can take: the
// caption prompt, captions, questions and answers as they are (what the BERT vocab is made from).
std::vector<std::string> dataset_texts();
// The same rendered as the training stages render them (data/chat_template.h: stage 1's plain
// "<video>\nDescribe the video. <caption>", stage 2's ChatML with the default system prompt), cut
// at the <video> tag: the texts the tokenizer is made from, so that every piece the pre-tokenizer
// cuts from a training text (" red" after a space, "red" at the start of an answer) is one token.
// The same for every dataset, so every dataset's tokenizer is the same.
std::vector<std::string> vocabulary_texts();

struct SynthOptions {
  std::string out{};     // output directory (created)
  int64_t train = 1000;  // training videos
  int64_t test = 200;    // held-out videos
  uint64_t seed = 0;
  VideoSpec video{};
  std::string codec{};  // FFmpeg encoder; empty = data/video_encoder.h's default (libx264, else mpeg4)
  int threads = 0;      // encoding threads; 0 = hardware threads
};

struct SynthSummary {
  int64_t train_videos = 0;
  int64_t test_videos = 0;
  // Records per question type name ("colour", ...), and stage-1 captions.
  std::map<std::string, int64_t> train_questions{};
  std::map<std::string, int64_t> test_questions{};
  int64_t captions = 0;
  int32_t tokenizer_ids = 0;  // tokenizer.json ids, special tokens included
  int32_t bert_tokens = 0;    // lines of bert_vocab.txt ([DEC] comes after them)
  std::string codec{};
};

// Called after each video with (videos done, videos in all), from the worker threads one at a time.
using SynthProgress = std::function<void(int64_t done, int64_t total)>;

// Writes the dataset into options.out:
//   videos/<id>.mp4   every video (train and test)
//   stage1.json       one caption record per train video: {"id", "video", "conversations":
//                     [{"from": "human", "value": "<video>\nDescribe the video."},
//                      {"from": "gpt", "value": <caption>}]}
//   stage2.json       one record per (train video, question), id "<video id>-<type>"
//   test.json         the same for the test videos, plus "type" and "answer" (= the gpt turn)
//   tokenizer.json    write_tiny_tokenizer(vocabulary_texts())
//   bert_vocab.txt    write_tiny_bert_vocab(dataset_texts())
//   README.txt        the options and the counts per type
// Manifests are JSON arrays, one record per line, paths relative to options.out (bvllm_prep
// --media_root=OUT). Throws bvllm::Error for invalid options or an unwritable directory.
SynthSummary write_synthetic_dataset(const SynthOptions& options, const SynthProgress& progress = {});

}  // namespace bvllm::data::synth
