// The training loop of bvllm_train: a recipe (recipes/recipe.h) becomes a model
// (tools/train/model_builder.h), a loader (data/loader.h) and AdamW with its schedule, and runs
// for the recipe's steps or epochs.
//
// One optimizer step = batch.grad_accum micro-batches of batch.micro_batch samples; each
// micro-batch's loss (the mean over its supervised tokens) is divided by grad_accum before
// backward, as the Hugging Face Trainer does; the logged loss is the mean of the micro-batch losses.
// Then the global gradient norm is clipped (optimizer.clip_grad_norm), the schedule sets the lr of
// step k to base_lr * λ(k) (runtime/optim/schedule.h), and AdamW steps.
//
// The run directory (RUN_DIR, default runs/<recipe name>) holds:
//   recipe.pb           the resolved recipe (defaults and --set applied)
//   metrics.jsonl       one line per optimizer step: {"step", "loss", "lr", "grad_norm",
//                       "tokens_per_s", "samples_per_s", "epoch", "kept_frames" (mean selected
//                       frames left after the temporal merge), "elapsed_s"}
//   checkpoints/        parallel/checkpoint.h directories: model.safetensors (every parameter),
//                       optimizer-rankNNNNN.safetensors (each rank's slices of <param>.exp_avg,
//                       .exp_avg_sq and, for half params, .master), trainer.json (step, dp),
//                       rank-NNNNN.json (that rank's loader position and AdamW step counts),
//                       recipe.pb; `latest`
// Resume (--resume) loads the latest checkpoint and continues exactly: the same batches, Gumbel
// noise, dropout masks and updates as a run that was never stopped (bitwise on the CPU). A run
// directory that already has checkpoints is refused without --resume, so nothing is overwritten.
//
// Many ranks (docs/distributed.md). Under mpirun every rank runs train() with the world
// communicator: dp = world / (tp x pp) replicas, each reading its own micro-batches (global batch
// k dp + r, data/loader.h), their gradients reduced by parallel::ZeroOptimizer (parallel.zero_stage
// 0, 1 or 2). The Gumbel noise and dropout masks of a micro-batch come from generators keyed by
// its position in the global sample stream, so dp ranks with grad_accum a compute what one
// process with grad_accum dp x a computes (parity tests: tests/tools/distributed_train_test.cc).
// Rank 0 writes metrics.jsonl and the console (the loss is the global batch's, tokens/s are summed
// over ranks); every rank writes its share of a checkpoint (its optimizer shard, its loader
// position) and rank 0 commits it, so a checkpoint is complete only when every rank's files are.
//
// A loss or gradient norm that is NaN or infinite stops the run before the optimizer touches the
// parameters; the last good checkpoint stays the latest.
//
// Precision: the CPU computes in f32 (bf16 tensors are widened to f32 by every CPU kernel, so
// precision.compute BF16 would only round the weights); bf16 compute with f32 master weights is the
// CUDA path's (runtime/optim/adamw.h keeps the master copy).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace bvllm::train {

struct TrainOptions {
  std::string recipe;                  // the recipe file
  std::vector<std::string> overrides;  // --set FIELD.PATH=VALUE, in order
  std::string run_dir;                 // default: runs/<recipe name>
  bool resume = false;                 // continue from RUN_DIR's latest checkpoint
  // Every rank of the run (mpirun), or null: this process alone. Must outlive train().
  parallel::Communicator* world = nullptr;
  // Testing: return after this optimizer step (0: run to the end) ...
  int64_t stop_after_step = 0;
  // ... or SIGKILL rank kill_rank in the middle of step kill_after_step + 1, after its first
  // micro-batch's forward (0: never), to test resume and the job's end when a rank dies.
  int64_t kill_after_step = 0;
  int kill_rank = 0;
  std::ostream* console = nullptr;  // progress lines (rank 0 only); default std::cerr
};

struct TrainResult {
  int64_t step = 0;         // optimizer steps done (counting those before a resume)
  int64_t total_steps = 0;  // what the recipe asks for
  double last_loss = 0;     // the last step's loss
  bool diverged = false;    // stopped by a NaN/inf loss or gradient norm
  std::string checkpoint;   // the latest checkpoint directory ("" when none was written)
  std::string run_dir;
};

// Runs the recipe. Throws bvllm::Error, before any work, for a malformed recipe or a refused run
// directory; errors while training (a bad sample that cannot be skipped, I/O) propagate.
TrainResult train(const TrainOptions& options);

}  // namespace bvllm::train
