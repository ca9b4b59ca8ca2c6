#include "runtime/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "runtime/error.h"

namespace bvllm::optim {

namespace {

void check_args(const char* name, int64_t step, int64_t warmup_steps) {
  BVLLM_REQUIRE(step >= 0, name, ": step ", step, " is negative");
  BVLLM_REQUIRE(warmup_steps >= 0, name, ": num_warmup_steps ", warmup_steps, " is negative");
}

void check_total(const char* name, int64_t total_steps) {
  BVLLM_REQUIRE(total_steps >= 0, name, ": num_training_steps ", total_steps, " is negative");
}

// The shared warmup ramp: float(s) / float(max(1, W)).
double warmup(int64_t step, int64_t warmup_steps) {
  return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
}

}  // namespace

double constant_with_warmup_lambda(int64_t step, int64_t warmup_steps) {
  check_args("constant_with_warmup", step, warmup_steps);
  if (step < warmup_steps) return warmup(step, warmup_steps);
  return 1.0;
}

double linear_with_warmup_lambda(int64_t step, int64_t warmup_steps, int64_t total_steps) {
  check_args("linear_with_warmup", step, warmup_steps);
  check_total("linear_with_warmup", total_steps);
  if (step < warmup_steps) return warmup(step, warmup_steps);
  return std::max(0.0, static_cast<double>(total_steps - step) /
                           static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps)));
}

double cosine_with_warmup_lambda(int64_t step, int64_t warmup_steps, int64_t total_steps, double num_cycles) {
  check_args("cosine_with_warmup", step, warmup_steps);
  check_total("cosine_with_warmup", total_steps);
  BVLLM_REQUIRE(std::isfinite(num_cycles), "cosine_with_warmup: num_cycles ", num_cycles, " is not finite");
  if (step < warmup_steps) return warmup(step, warmup_steps);
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  // Same evaluation order as Python's math.pi * float(num_cycles) * 2.0 * progress.
  return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
}

int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio) {
  BVLLM_REQUIRE(total_steps >= 0, "warmup_steps_from_ratio: total steps ", total_steps, " is negative");
  BVLLM_REQUIRE(ratio >= 0.0 && ratio <= 1.0, "warmup_steps_from_ratio: warmup_ratio ", ratio, " (expected in [0, 1])");
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * ratio));
}

double Schedule::operator()(int64_t step) const {
  switch (kind) {
    case ScheduleKind::ConstantWithWarmup: return constant_with_warmup_lambda(step, warmup_steps);
    case ScheduleKind::Linear: return linear_with_warmup_lambda(step, warmup_steps, total_steps);
    case ScheduleKind::Cosine: return cosine_with_warmup_lambda(step, warmup_steps, total_steps, num_cycles);
  }
  throw Error("Schedule: unknown kind");
}

ScheduleKind parse_schedule_kind(std::string_view name) {
  if (name == "constant_with_warmup") return ScheduleKind::ConstantWithWarmup;
  if (name == "linear") return ScheduleKind::Linear;
  if (name == "cosine") return ScheduleKind::Cosine;
  throw Error(
      str_cat("unknown lr schedule \"", std::string(name), "\" (expected constant_with_warmup, linear or cosine)"));
}

}  // namespace bvllm::optim
