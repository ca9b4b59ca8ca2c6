// Tiny video QA samples for the trainer, eval and inference tests: video i is a 32 x 32 square of
// colour i % 3 (red, green, blue) on a dark background, moving right when (i / 3) is even, else
// left, over `frames` frames. Stage 1 has its caption, stage 2 a question about its colour (even i)
// or its direction (odd i).
#pragma once

#include <string>
#include <vector>

#include "data/sample.pb.h"

namespace bvllm::testing {

std::string square_colour(int i);     // "red", "green" or "blue"
std::string square_direction(int i);  // "right" or "left"
bool asks_colour(int i);
std::string square_question(int i);  // stage 2's question (without the <video> tag)
std::string square_answer(int i);
std::string square_caption(int i);  // stage 1's answer: "a red square moves right."

// Frame f of video i as a JPEG.
std::string square_frame_jpeg(int i, int f);
// The stored sample: id "v<i>", `frames` JPEG frames, one human and one gpt turn.
data::Sample square_sample(int i, int stage, int frames = 4);

}  // namespace bvllm::testing
