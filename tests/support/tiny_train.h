// A tiny B-VLLM training setup for the trainer's tests (tests/tools/trainer_test.cc, one process;
// tests/tools/distributed_train_test.cc, under mpirun): shards of videos of a coloured square
// moving left or right with captions (stage 1) and questions (stage 2), the small vocabularies of
// their texts, and a recipe template over them.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm::testing {

constexpr int kTinyTrainSamples = 24;

// Writes ROOT/shards1, ROOT/shards2, ROOT/tokenizer.json and ROOT/bert_vocab.txt.
void write_tiny_train_data(const std::filesystem::path& root);

// A tiny stage-`stage` recipe over ROOT's data (20 steps, micro-batch 2 x grad_accum 2, checkpoints
// every 5), with --set style overrides applied; protobuf text.
std::string tiny_recipe_text(const std::filesystem::path& root, int stage,
                             const std::vector<std::string>& overrides = {});

// RUN_DIR/metrics.jsonl, one object per line.
std::vector<nlohmann::json> read_metrics(const std::string& run_dir);

// The "model" tensors of a checkpoint (a step directory or a checkpoint DIR's latest).
std::map<std::string, Tensor> checkpoint_model(const std::string& checkpoint);

bool bitwise_equal(const Tensor& a, const Tensor& b);

// BVLLM_BINARY_DIR/bin/<name>.
std::string program_path(const std::string& name);

// Runs a shell command line; its exit status, or -1 when it did not exit normally.
int run_command(const std::string& command);

}  // namespace bvllm::testing
