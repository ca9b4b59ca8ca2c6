// Checkpoint directories: the trainer's whole state at one step, written so that a crash at any
// point leaves the last good checkpoint loadable (../shared/DESIGN.md "Distributed checkpoint").
//
//   DIR/step-00000200/model.safetensors       one file per Checkpoint::tensors entry (its stem)
//   DIR/step-00000200/optimizer-rank00001.safetensors
//   DIR/step-00000200/trainer.json            one file per Checkpoint::texts entry, bytes as given
//   DIR/step-00000200/manifest.pb             CheckpointManifest (parallel/checkpoint.proto), text
//   DIR/latest                                "step-00000200\n": the last save that completed
//
// One process:
//   Checkpoint ckpt{.step = 200};
//   ckpt.tensors["model"] = model.named_parameters();
//   ckpt.texts["trainer.json"] = state.dump();
//   save_checkpoint(run_dir + "/checkpoints", ckpt, {.keep_last = 3});
//   Checkpoint back = load_checkpoint(run_dir + "/checkpoints");  // the latest step
//
// Many ranks, each writing its own files (this file knows nothing of MPI: the caller moves the
// parts and places the barriers):
//   if (rank == 0) prepare_checkpoint_dir(dir, step);          // then: barrier
//   CheckpointPart mine = write_checkpoint_part(dir, part);      // every rank, rank-suffixed stems
//   ... gather mine.serialize() to rank 0 (which waits for every part: they are durable then) ...
//   if (rank == 0) commit_checkpoint(dir, step, parts, {.keep_last = 3});  // then: barrier
//
// A save writes DIR/.tmp-step-XXXXXXXX/ (a name every writer derives from the step alone), every
// writer fsyncs its files; the committer writes manifest.pb, fsyncs it and the directory, renames
// it to step-XXXXXXXX (swapping atomically with an existing directory of the same step), then
// replaces DIR/latest by write + fsync + rename. Until that last rename, `latest` names the
// previous complete step; after it, the new one. One save into a DIR at a time.
//
// Optimizer state under ZeRO is saved as 1-D ranges of each parameter's flattened state
// (Checkpoint::slices); assemble_flat_range builds any range back from whichever files hold it,
// so a run can resume on another dp.
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

// The newest manifest format this code reads and writes (parallel/checkpoint.proto). A save
// whose tensors are all whole writes version 1, which older readers load too.
constexpr int kCheckpointFormatVersion = 2;

// Elements [flat_start, flat_start + n) of the row-major flattening of a tensor of global_shape,
// where n is the numel of the 1-D tensor stored (a rank's ZeRO shard of "x.weight.exp_avg").
struct TensorSlice {
  Shape global_shape;
  int64_t flat_start = 0;
  bool operator==(const TensorSlice&) const = default;
};

struct Checkpoint {
  int64_t step = 0;
  // file stem -> named tensors ("model" -> DIR/step-X/model.safetensors). Loaded tensors are CPU
  // tensors in the order they were saved (views of the file's private mapping where aligned).
  std::map<std::string, NamedTensors> tensors;
  // file stem -> tensor name -> the slice that tensor of that stem is (stored as a 1-D tensor).
  // Tensors not listed are whole. A load fills it back the same way.
  std::map<std::string, std::map<std::string, TensorSlice>> slices;
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

// Writes DIR/step-<step, 8 digits>/ atomically and returns its path: prepare_checkpoint_dir,
// write_checkpoint_part and commit_checkpoint in one process. An existing directory of the same
// step is replaced whole. Leftover DIR/.tmp-* entries of an interrupted save are removed first.
// Stems and text names must be plain file names (no '/', not "manifest.pb", not clashing); a bad
// name or a failed write throws bvllm::Error naming it, and leaves DIR as it was.
std::string save_checkpoint(const std::string& dir, const Checkpoint& checkpoint,
                            const CheckpointSaveOptions& options = {});

// --- a save by many writers (ranks) ------------------------------------------------------------

// What one writer's files add to the manifest: a CheckpointManifest with the step, its files and
// its tensors. serialize()/parse() carry it to the committing rank as bytes (binary protobuf).
struct CheckpointPart {
  CheckpointManifest manifest;
  std::string serialize() const;
  // Throws bvllm::Error when `bytes` are not a CheckpointManifest; `source` names them in it.
  static CheckpointPart parse(const std::string& bytes, const std::string& source = "checkpoint part");
};

// Creates DIR (if needed) and the empty DIR/.tmp-step-XXXXXXXX the writers of `step` write into,
// after removing every DIR/.tmp-* an interrupted save left (the same step's included). Returns
// its path. One process (rank 0) calls it, before any writer starts (a barrier after it).
std::string prepare_checkpoint_dir(const std::string& dir, int64_t step);

// Writes `part`'s tensor files and texts into the prepared DIR/.tmp-step-<part.step>, fsynced,
// and returns their manifest entries. Every writer calls it with its own file names (rank-
// suffixed stems: "optimizer-rank00003"); a name already written there by another part is an
// error, as in save_checkpoint are bad names and slices that do not fit their global shape. Only
// options.on_stage is used ("wrote <file>" after each file).
CheckpointPart write_checkpoint_part(const std::string& dir, const Checkpoint& part,
                                     const CheckpointSaveOptions& options = {});

// Completes the save of `step` once every part is written (the caller makes sure of that: a
// gather of the parts after each writer returned): checks the parts (their step, file names that
// clash between parts, every file present with its size, no file that no part lists), writes
// manifest.pb listing every part's files and tensors in the order of `parts`, fsyncs, renames
// the directory into place, moves DIR/latest and prunes as save_checkpoint does, with the stages
// "wrote manifest.pb", "directory", "latest", "done". Returns the step directory's path. On an
// error the prepared directory is removed and DIR keeps its previous state.
std::string commit_checkpoint(const std::string& dir, int64_t step, const std::vector<CheckpointPart>& parts,
                              const CheckpointSaveOptions& options = {});

// --- loading ---------------------------------------------------------------------------------

// Loads a step directory (one that holds manifest.pb), or a checkpoint DIR (then its latest
// complete step). Everything is checked against the manifest: every file present with its
// recorded size, each safetensors file holding exactly the manifest's tensors with their dtype
// and shape (a slice: 1-D, within its global shape). Errors are bvllm::Error naming the file and
// the field or tensor.
Checkpoint load_checkpoint(const std::string& path);

// Elements [start, start + length) of the flattened global tensor `name`, as a 1-D CPU tensor of
// `dtype` (converted as Tensor::copy_ converts), built from every stem that holds `name` whole or
// a slice of it (a whole tensor in one stem, ZeRO shards of any dp in others). Throws
// bvllm::Error naming the tensor when no stem holds it, when the holders disagree on its global
// shape, when the range is outside it, when two holders overlap inside the range, or when some of
// its elements are in no holder (naming the missing ranges).
Tensor assemble_flat_range(const Checkpoint& checkpoint, const std::string& name, int64_t start, int64_t length,
                           DType dtype);

// The global shape of `name` (a whole tensor's shape, a slice's global_shape) in the first stem
// that holds it, or nullopt when none does.
std::optional<Shape> find_global_shape(const Checkpoint& checkpoint, const std::string& name);

// The newest complete step directory of DIR (its path), or nullopt when there is none: the one
// DIR/latest names when that is complete, else (latest missing or naming a damaged directory) the
// highest-step complete one. Complete = manifest.pb parses and every file it lists has its size.
// .tmp-* leftovers are ignored.
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Every complete step directory of DIR, by increasing step (paths).
std::vector<std::string> list_checkpoints(const std::string& dir);

// Reads and checks DIR/step-X/manifest.pb (format version, file names, shapes and slices within
// them); throws naming the file and field. Does not look at the other files.
CheckpointManifest read_checkpoint_manifest(const std::string& step_dir);

}  // namespace bvllm::parallel
