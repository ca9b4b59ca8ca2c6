// Checkpoint directories: the trainer's whole state at one step, written so that a crash at any
// point leaves the last good checkpoint loadable (../shared/DESIGN.md "Distributed checkpoint").
//
//   DIR/step-00000200/model.safetensors       one file per Checkpoint::tensors entry (its stem)
//   DIR/step-00000200/optimizer.safetensors
//   DIR/step-00000200/trainer.json            one file per Checkpoint::texts entry, bytes as given
//   DIR/step-00000200/manifest.pb             CheckpointManifest (parallel/checkpoint.proto), text
//   DIR/latest                                "step-00000200\n": the last save that completed
//
//   Checkpoint ckpt{.step = 200};
//   ckpt.tensors["model"] = model.named_parameters();
//   ckpt.texts["trainer.json"] = state.dump();
//   save_checkpoint(run_dir + "/checkpoints", ckpt, {.keep_last = 3});
//   Checkpoint back = load_checkpoint(run_dir + "/checkpoints");  // the latest step
//
// A save writes DIR/.tmp-step-XXXXXXXX-<pid>/, fsyncs every file and the directory, renames it to
// step-XXXXXXXX (swapping atomically with an existing directory of the same step), then replaces
// DIR/latest by write + fsync + rename. Until that last rename, `latest` names the previous
// complete step; after it, the new one. One process saves into a DIR at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "parallel/checkpoint.pb.h"
#include "runtime/io/safetensors.h"  // defines: NamedTensors

namespace bvllm::parallel {

constexpr int kCheckpointFormatVersion = 1;

struct Checkpoint {
  int64_t step = 0;
  // file stem -> named tensors ("model" -> DIR/step-X/model.safetensors). Loaded tensors are CPU
  // tensors in the order they were saved (views of the file's private mapping where aligned).
  std::map<std::string, NamedTensors> tensors;
  // file name -> contents ("trainer.json", "recipe.pb"), any bytes.
  std::map<std::string, std::string> texts;
};

struct CheckpointSaveOptions {
  // > 0: after `latest` names the new step, delete the oldest step directories so that at most
  // keep_last remain among the new one and those of lower steps (directories of HIGHER steps, left
  // by a run that was resumed from an earlier step, are not touched). 0 keeps every step.
  int keep_last = 0;
  // Called after each stage of the save is durable, in order: "wrote <file>" for each file of the
  // step directory (manifest.pb last), "directory" (step-X renamed into place), "latest" (DIR/latest
  // names it), "done" (replaced and pruned directories deleted). For progress logs, and for tests
  // that simulate a crash at each of these points.
  std::function<void(const std::string& stage)> on_stage = nullptr;
};

// "step-00000200" (at least 8 digits).
std::string checkpoint_dir_name(int64_t step);

// Writes DIR/step-<step, 8 digits>/ atomically and returns its path. An existing directory of
// the same step is replaced whole. Leftover DIR/.tmp-* entries of an interrupted save are removed
// first. Stems and text names must be plain file names (no '/', not "manifest.pb", not clashing);
// a bad name or a failed write throws bvllm::Error naming it, and leaves DIR as it was.
std::string save_checkpoint(const std::string& dir, const Checkpoint& checkpoint,
                            const CheckpointSaveOptions& options = {});

// Loads a step directory (one that holds manifest.pb), or a checkpoint DIR (then its latest
// complete step). Everything is checked against the manifest: every file present with its
// recorded size, each safetensors file holding exactly the manifest's tensors with their dtype
// and shape. Errors are bvllm::Error naming the file and the field or tensor.
Checkpoint load_checkpoint(const std::string& path);

// The newest complete step directory of DIR (its path), or nullopt when there is none: the one
// DIR/latest names when that is complete, else (latest missing or naming a damaged directory) the
// highest-step complete one. Complete = manifest.pb parses and every file it lists has its size.
// .tmp-* leftovers are ignored.
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Every complete step directory of DIR, by increasing step (paths).
std::vector<std::string> list_checkpoints(const std::string& dir);

// Reads and checks DIR/step-X/manifest.pb (format version, file names); throws naming the file
// and field. Does not look at the other files.
CheckpointManifest read_checkpoint_manifest(const std::string& step_dir);

}  // namespace bvllm::parallel
