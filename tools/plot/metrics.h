// A training run's metrics.jsonl, as the trainer writes it: one JSON object per line,
//   {"step": 12, "loss": 2.3125, "lr": 0.0001, "grad_norm": 1.7, "tokens_per_s": 850.2, ...}
// for an optimizer step, and {"step": 200, "eval_loss": 1.2} for an evaluation.
//
// What is read: "step" (an integer >= 0, required), "loss" and "lr" (a training line: a number, or
// null for a NaN/infinite value, which a failed run writes), "eval_loss" (an evaluation line).
// Other fields are ignored, and so are lines with none of the three values. Blank lines are skipped;
// NaN, Infinity and -Infinity written as bare words (as Python's json module does) count as null.
//
// A resumed run appends to the same file from its checkpoint's step, so steps repeat: a training
// line whose step is not above the previous training line's step starts the resumed part, and every
// earlier value at that step or later (loss, lr and eval_loss) is dropped: the later line wins, and
// steps that the crashed run reached after its checkpoint do not linger when the resumed run has not
// reached them yet. An evaluation line replaces the evaluations at its step and later in the same way.
//
// A last line without its newline that does not parse is the line a killed run was writing: it is
// skipped and counted. Any other bad line is a bvllm::Error "FILE:LINE: what is wrong".
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace bvllm::plot {

struct MetricPoint {
  int64_t step = 0;
  double value = 0;  // NaN for null
};

struct RunMetrics {
  std::string path;  // as given
  std::string name;  // RUN_DIR's name for RUN_DIR/metrics.jsonl, else the file name without extension
  std::vector<MetricPoint> loss, lr, eval_loss;  // each in ascending step order, one point per step
  int64_t lines = 0;                             // lines with a value that were read
  int64_t replaced = 0;                          // of those, dropped because a later line repeated their step
  bool incomplete_last_line = false;             // skipped (see above)

  int64_t first_step() const;  // over all three series; 0 when all are empty
  int64_t last_step() const;
};

RunMetrics read_metrics(const std::string& path);
// The same from a stream; `path` names it in errors.
RunMetrics parse_metrics(std::istream& in, const std::string& path);

}  // namespace bvllm::plot
