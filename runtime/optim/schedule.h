// Learning-rate multipliers λ(s), exactly as transformers' optimization.py defines them
// (get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup; research/models-formats.md §6.2). With W warmup steps and T
// training steps:
//
//   warmup (all):  s < W  ->  s / max(1, W)
//   constant:      1
//   linear:        max(0, (T − s) / max(1, T − W))
//   cosine:        max(0, ½(1 + cos(π · c · 2 · p))),  p = (s − W) / max(1, T − W),  c = num_cycles
//
// The scheduler is a torch LambdaLR: lr = base_lr · λ(s). Its constructor takes the first step
// and the loop calls scheduler.step() after optimizer.step(), so optimizer step k (0-based) uses
// λ(k): the first update has lr 0 whenever W > 0. Callers pass k, e.g.
// `adamw.set_lr_multiplier(schedule(k)); adamw.step();`.
#pragma once

#include <cstdint>
#include <string_view>

namespace bvllm::optim {

double constant_with_warmup_lambda(int64_t step, int64_t warmup_steps);
double linear_with_warmup_lambda(int64_t step, int64_t warmup_steps, int64_t total_steps);
double cosine_with_warmup_lambda(int64_t step, int64_t warmup_steps, int64_t total_steps, double num_cycles = 0.5);

// transformers TrainingArguments.get_warmup_steps with warmup_steps 0: ceil(total · ratio).
int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio);

enum class ScheduleKind { ConstantWithWarmup, Linear, Cosine };

// One of the schedules with its arguments, for code that picks one from a recipe.
struct Schedule {
  ScheduleKind kind = ScheduleKind::ConstantWithWarmup;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // unused by ConstantWithWarmup
  double num_cycles = 0.5;  // Cosine only

  double operator()(int64_t step) const;  // λ(step)
};

// "constant_with_warmup", "linear" or "cosine" (transformers' SchedulerType names).
ScheduleKind parse_schedule_kind(std::string_view name);

}  // namespace bvllm::optim
