#include "tests/support/moving_squares.h"

#include "data/jpeg.h"
#include "runtime/tensor.h"

namespace bvllm::testing {
namespace {

constexpr int kSide = 32;

}  // namespace

std::string square_colour(int i) {
  static const std::vector<std::string> kColours = {"red", "green", "blue"};
  return kColours[static_cast<size_t>(i % 3)];
}
std::string square_direction(int i) { return (i / 3) % 2 == 0 ? "right" : "left"; }
bool asks_colour(int i) { return i % 2 == 0; }
std::string square_question(int i) {
  return asks_colour(i) ? "What colour is the object?" : "Which direction does the object move?";
}
std::string square_answer(int i) { return asks_colour(i) ? square_colour(i) : square_direction(i); }
std::string square_caption(int i) { return "a " + square_colour(i) + " square moves " + square_direction(i) + "."; }

std::string square_frame_jpeg(int i, int f) {
  const int colour = i % 3;
  Tensor rgb = Tensor::empty({kSide, kSide, 3}, DType::U8);
  uint8_t* p = rgb.data<uint8_t>();
  const int x0 = square_direction(i) == "right" ? 2 + 6 * f : kSide - 12 - 6 * f;
  for (int y = 0; y < kSide; ++y)
    for (int x = 0; x < kSide; ++x) {
      const bool in = x >= x0 && x < x0 + 10 && y >= 11 && y < 21;
      for (int c = 0; c < 3; ++c) p[(y * kSide + x) * 3 + c] = in ? (c == colour ? 230 : 20) : 40;
    }
  return data::encode_jpeg(rgb, 90);
}

data::Sample square_sample(int i, int stage, int frames) {
  data::Sample s;
  std::string id = "v";  // (not "v" + to_string(i): GCC 12's -Wrestrict misfires on it here)
  id += std::to_string(i);
  s.set_id(id);
  s.set_kind(data::Sample::VIDEO);
  for (int f = 0; f < frames; ++f) s.add_frames(square_frame_jpeg(i, f));
  s.set_width(kSide);
  s.set_height(kSide);
  auto turn = [&](const char* from, const std::string& value) {
    data::Turn* t = s.add_conversations();
    t->set_from(from);
    t->set_value(value);
  };
  std::string question = "<video>\n";
  question += stage == 1 ? std::string("Describe the video.") : square_question(i);
  turn("human", question);
  turn("gpt", stage == 1 ? square_caption(i) : square_answer(i));
  return s;
}

}  // namespace bvllm::testing
