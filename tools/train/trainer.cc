#include "tools/train/trainer.h"

#include <glog/logging.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/loader.h"
#include "parallel/checkpoint.h"
#include "parallel/process_grid.h"
#include "parallel/self_communicator.h"
#include "parallel/zero_optimizer.h"
#include "recipes/recipe.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "runtime/optim/schedule.h"
#include "runtime/rng.h"
#include "tools/train/model_builder.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The noise of a micro-batch whose first sample is at global stream position p: Gumbel noise from
// stream kMicroBatchStreams + 2p, dropout from the next (the model builder draws init and LoRA
// from streams 1 and 2), so it does not depend on which rank computes the micro-batch.
constexpr uint64_t kMicroBatchStreams = uint64_t{1} << 32;
// Consecutive samples that fail to load before the run gives up.
constexpr int kMaxSkippedBatches = 16;

// "optimizer-rank00003", "rank-00003.json": a rank's files in a checkpoint.
std::string rank_name(const char* prefix, int rank, const char* suffix = "") {
  std::ostringstream out;
  out << prefix << std::setw(5) << std::setfill('0') << rank << suffix;
  return out.str();
}

parallel::ZeroOptions zero_options(const recipes::Recipe& recipe) {
  const recipes::Parallel& p = recipe.parallel();
  const recipes::Optimizer& o = recipe.optimizer();
  parallel::ZeroOptions z;
  z.stage = static_cast<int>(p.zero_stage());
  z.reduce = p.grad_reduce() == recipes::PER_STEP ? parallel::GradReduce::PerStep : parallel::GradReduce::PerMicroBatch;
  z.bucket_elements = p.bucket_elements();
  z.adamw = optim::AdamWOptions{
      .lr = o.lr(), .beta1 = o.beta1(), .beta2 = o.beta2(), .eps = o.eps(), .weight_decay = o.weight_decay()};
  return z;
}

std::string megabytes(int64_t bytes) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << static_cast<double>(bytes) / 1e6 << " MB";
  return out.str();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  std::ostringstream out;
  if (s >= 3600)
    out << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
  else if (s >= 60)
    out << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
  else
    out << s << "s";
  return out.str();
}

optim::Schedule make_schedule(const recipes::Recipe& recipe, int64_t total_steps) {
  optim::Schedule s;
  switch (recipe.schedule().kind()) {
    case recipes::CONSTANT: s.kind = optim::ScheduleKind::ConstantWithWarmup; break;
    case recipes::LINEAR: s.kind = optim::ScheduleKind::Linear; break;
    case recipes::COSINE: s.kind = optim::ScheduleKind::Cosine; break;
    default: throw Error(str_cat("unknown schedule kind ", recipe.schedule().kind()));
  }
  s.total_steps = total_steps;
  if (recipe.schedule().has_warmup_steps()) s.warmup_steps = recipe.schedule().warmup_steps();
  if (recipe.schedule().has_warmup_ratio())
    s.warmup_steps = optim::warmup_steps_from_ratio(total_steps, recipe.schedule().warmup_ratio());
  return s;
}

// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    BVLLM_REQUIRE(out, tmp.string(), ": cannot write");
    out << text;
    out.flush();
    BVLLM_REQUIRE(out, tmp.string(), ": write failed");
  }
  fs::rename(tmp, path);
}

// Keeps the metrics lines of steps <= `step` (a resumed run rewrites what came after its checkpoint).
void truncate_metrics(const fs::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) break;
    kept += line + "\n";
  }
  write_file_atomically(path, kept);
}

class Trainer {
 public:
  explicit Trainer(const TrainOptions& options)
      : options_(options),
        self_(options.world == nullptr ? std::make_unique<parallel::SelfCommunicator>() : nullptr),
        world_(options.world != nullptr ? *options.world : *self_),
        rank_(world_.rank()),
        console_(rank_ != 0                   ? null_console_
                 : options.console != nullptr ? *options.console
                                              : std::cerr) {}

  TrainResult run() {
    setup();
    TrainResult result;
    result.total_steps = total_steps_;
    result.run_dir = run_dir_.string();
    if (latest_.has_value()) result.checkpoint = *latest_;
    const int64_t last = options_.stop_after_step > 0 ? std::min(options_.stop_after_step, total_steps_) : total_steps_;
    while (step_ < last) {
      const StepStats stats = train_step();
      result.last_loss = stats.loss;
      if (!std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm)) {
        result.diverged = true;
        LOG(ERROR) << "step " << step_ + 1 << ": the " << (std::isfinite(stats.loss) ? "gradient norm" : "loss")
                   << " is " << (std::isfinite(stats.loss) ? stats.grad_norm : stats.loss)
                   << "; stopping before the update. "
                   << (latest_ ? "The last good checkpoint is " + *latest_ +
                                     " (resume with --resume after fixing the "
                                     "cause, e.g. a lower optimizer.lr)"
                               : std::string("No checkpoint was written yet."));
        write_metrics(stats, /*finite=*/false);
        break;
      }
      ++step_;
      write_metrics(stats, true);
      print_progress(stats);
      const int64_t every = recipe_.checkpoint().every_steps();
      if ((every > 0 && step_ % every == 0) || step_ == total_steps_) save();
    }
    result.step = step_;
    if (latest_.has_value()) result.checkpoint = *latest_;
    if (!result.diverged && step_ == total_steps_)
      console_ << "bvllm_train: done, " << step_ << " steps in " << format_duration(elapsed())
               << ". Metrics: " << (run_dir_ / "metrics.jsonl").string() << "; checkpoint: " << result.checkpoint
               << std::endl;
    return result;
  }

 private:
  struct StepStats {
    double loss = 0, grad_norm = 0, lr = 0;
    int64_t tokens = 0, samples = 0;
    double seconds = 0;
    double kept_frames = 0;  // summed over samples with frames: rows left after the temporal merge
    int64_t visual_samples = 0;
  };

  void setup() {
    // The recipe, checked before anything is built or written.
    source_ = options_.recipe;
    recipe_ = recipes::load_recipe(options_.recipe, options_.overrides);
    recipes::validate(recipe_, source_, {.world = world_.size()});
    const parallel::ProcessGrid grid(world_.size(), rank_, static_cast<int>(recipe_.parallel().tp()),
                                     static_cast<int>(recipe_.parallel().pp()));
    BVLLM_REQUIRE(grid.tp() == 1 && grid.pp() == 1, source_, ": parallel.tp ", grid.tp(), ", parallel.pp ", grid.pp(),
                  ": tensor and pipeline parallelism are not implemented yet (data parallelism is: tp 1, pp 1)");
    dp_ = grid.dp();
    run_dir_ = options_.run_dir.empty() ? fs::path("runs") / (recipe_.name().empty() ? "run" : recipe_.name())
                                        : fs::path(options_.run_dir);
    checkpoint_dir_ =
        recipe_.checkpoint().dir().empty() ? run_dir_ / "checkpoints" : fs::path(recipe_.checkpoint().dir());
    latest_ = parallel::latest_checkpoint(checkpoint_dir_.string());
    BVLLM_REQUIRE(!latest_.has_value() || options_.resume, run_dir_.string(), ": has checkpoints (", *latest_,
                  "); pass --resume to continue that run, or choose another --run_dir");
    BVLLM_REQUIRE(latest_.has_value() || !options_.resume, checkpoint_dir_.string(),
                  ": --resume, but there is no checkpoint to resume from");
    // Names the patterns and the LoRA target against the model's parameters before anything is
    // allocated (a meta-device build); the tokenizers first, since the Q-Former's vocabulary is theirs.
    tokenizers_ = std::make_unique<Tokenizers>(load_tokenizers(recipe_, source_));
    const int64_t bert_vocab = tokenizers_->bert.vocab_size();
    build_model(recipe_, source_, bert_vocab, {.meta = true});
    const int64_t llm_vocab = bvllm_config(recipe_, source_, bert_vocab).llm.vocab_size;
    BVLLM_REQUIRE(tokenizers_->qwen.vocab_size() <= llm_vocab, source_, ": model.tokenizer: its ",
                  tokenizers_->qwen.vocab_size(), " ids do not fit the LLM's vocabulary of ", llm_vocab);

    // The data.
    loader_ =
        std::make_unique<data::DataLoader>(loader_options(recipe_, rank_, dp_), tokenizers_->qwen, tokenizers_->bert);
    const int64_t per_step = recipe_.batch().micro_batch() * recipe_.batch().grad_accum() * dp_;
    total_steps_ =
        recipe_.has_steps()
            ? recipe_.steps()
            : static_cast<int64_t>(std::ceil(recipe_.epochs() * static_cast<double>(loader_->samples_per_epoch()) /
                                             static_cast<double>(per_step)));
    BVLLM_REQUIRE(total_steps_ > 0, source_, ": epochs: ", recipe_.epochs(), " of ", loader_->samples_per_epoch(),
                  " samples is no optimizer step of ", per_step, " samples");

    // The model, the optimizer and the schedule.
    built_ = build_model(recipe_, source_, bert_vocab, {.load_weights = !options_.resume});
    model_ = built_.model;
    model_->train();
    if (!options_.resume) make_optimizer();  // restore() makes it over the loaded parameters
    schedule_ = make_schedule(recipe_, total_steps_);

    if (options_.resume) restore(*latest_);
    if (rank_ == 0) {
      fs::create_directories(run_dir_);
      if (options_.resume)
        truncate_metrics(run_dir_ / "metrics.jsonl", step_);
      else
        std::ofstream(run_dir_ / "metrics.jsonl", std::ios::trunc);
      write_file_atomically(run_dir_ / "recipe.pb", recipes::recipe_to_text(recipe_));
      metrics_.open(run_dir_ / "metrics.jsonl", std::ios::app);
      BVLLM_REQUIRE(metrics_, (run_dir_ / "metrics.jsonl").string(), ": cannot write");
    }

    int64_t trainable = 0;
    for (const auto& [name, t] : model_->named_trainable_parameters()) trainable += t.numel();
    console_ << "bvllm_train: " << source_ << " (" << recipe_.name() << "): " << model_->num_parameters()
             << " parameters, " << trainable << " trainable in " << built_.trainable.size() << " tensors"
             << (built_.lora_modules > 0 ? str_cat(", LoRA on ", built_.lora_modules, " linears") : std::string())
             << "; " << loader_->samples_per_epoch() << " samples per epoch; " << total_steps_ << " steps of "
             << per_step << " samples; " << omp_get_max_threads() << " threads"
             << (dp_ > 1 ? str_cat(" x ", dp_, " data-parallel ranks") : std::string()) << "; run dir "
             << run_dir_.string() << (options_.resume ? str_cat("; resumed at step ", step_) : std::string())
             << std::endl;
    const parallel::ZeroMemory memory = zero_->memory();
    console_ << "bvllm_train: ZeRO stage " << zero_->stage()
             << (zero_->stage() == 2 ? zero_->reduce() == parallel::GradReduce::PerStep
                                           ? " (reduce-scatter once per step)"
                                           : " (reduce-scatter per micro-batch)"
                                     : "")
             << " over dp " << dp_ << ": rank 0 updates " << memory.owned_elements << " of " << memory.total_elements
             << " trainable elements; gradient buffers " << megabytes(memory.grad_bytes) << ", AdamW state "
             << megabytes(memory.state_bytes) << std::endl;
    if (recipe_.precision().compute() == recipes::BF16)
      LOG(INFO) << "precision.compute BF16: the CPU computes in f32 (see tools/train/trainer.h)";
    start_ = Clock::now();
  }

  // AdamW with the HF Trainer's two groups (weight decay on matrices, none on biases and norms),
  // over the data-parallel ranks.
  void make_optimizer() {
    parallel::ZeroParamGroup decay, no_decay;
    decay.weight_decay = recipe_.optimizer().weight_decay();
    no_decay.weight_decay = 0.0;
    for (const auto& [name, t] : model_->named_trainable_parameters())
      (t.dim() >= 2 ? decay : no_decay).params.emplace_back(name, t);
    std::vector<parallel::ZeroParamGroup> groups;
    if (!decay.params.empty()) groups.push_back(std::move(decay));
    if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
    zero_.reset();  // its hooks detach before the new one's attach
    zero_ = std::make_unique<parallel::ZeroOptimizer>(std::move(groups), world_, world_, zero_options(recipe_));
  }

  struct MicroBatch {
    std::vector<layers::BvllmSample> samples;
    int64_t position = 0;  // of its first sample in the global stream
  };

  MicroBatch next_micro_batch() {
    for (int skipped = 0;; ++skipped) {
      try {
        std::vector<data::LoadedSample> loaded = loader_->next_batch();
        MicroBatch batch;
        batch.position = loaded.empty() ? 0 : loaded.front().position;
        std::vector<layers::BvllmSample>& samples = batch.samples;
        for (data::LoadedSample& s : loaded) {
          layers::BvllmSample& sample = samples.emplace_back();
          sample.ids = std::move(s.ids);
          sample.labels = std::move(s.labels);
          sample.pixels = std::move(s.pixels);
          sample.bert_ids = std::move(s.bert_ids);
          sample.bert_mask = std::move(s.bert_mask);
        }
        return batch;
      } catch (const Error& e) {
        BVLLM_REQUIRE(skipped + 1 < kMaxSkippedBatches, "bvllm_train: ", kMaxSkippedBatches,
                      " batches in a row failed to load; the last: ", e.what());
        LOG(WARNING) << "skipping a batch: " << e.what();
      }
    }
  }

  // The generators of a micro-batch, keyed by its position (see kMicroBatchStreams).
  void seed_micro_batch(int64_t position) {
    const uint64_t stream = kMicroBatchStreams + 2 * static_cast<uint64_t>(position);
    gumbel_ = Generator{.seed = recipe_.seed(), .stream = stream};
    default_generator() = Generator{.seed = recipe_.seed(), .stream = stream + 1};
  }

  StepStats train_step() {
    const auto begin = Clock::now();
    StepStats stats;
    const int64_t accum = recipe_.batch().grad_accum();
    // This rank's sums, then the global batch's: loss (mean over micro-batches), tokens, samples,
    // frames kept, samples with frames.
    Tensor sums = ops::zeros({5}, DType::F64);
    double* sum = sums.data<double>();
    for (int64_t micro = 0; micro < accum; ++micro) {
      const MicroBatch batch = next_micro_batch();
      seed_micro_batch(batch.position);
      zero_->begin_micro_batch(micro == accum - 1);
      layers::BvllmOutput out = model_->forward(batch.samples, {.generator = &gumbel_});
      BVLLM_REQUIRE(out.loss.defined(), "bvllm_train: a micro-batch without labels");
      if (options_.kill_after_step > 0 && step_ == options_.kill_after_step && micro == 0 &&
          rank_ == options_.kill_rank) {
        // (Not naming the rank: the job's own messages must.)
        LOG(ERROR) << "--debug_kill_after_step " << step_ << ": SIGKILL in step " << step_ + 1;
        std::raise(SIGKILL);
      }
      warn_if_unsupervised(out.labels);
      sum[0] += out.loss.item<float>() / static_cast<double>(accum);
      for (int64_t n : out.lengths) sum[1] += static_cast<double>(n);
      sum[2] += static_cast<double>(batch.samples.size());
      for (const layers::VisualSelection& v : out.visual) {
        if (v.tokens == 0) continue;
        sum[3] += static_cast<double>(v.kept.size());
        sum[4] += 1;
      }
      // A non-finite loss still goes backward (its gradients are not finite either), so every rank
      // issues the same collectives and all of them see the non-finite norm and stop together.
      ops::mul(out.loss, 1.0 / static_cast<double>(accum)).backward();
      zero_->end_micro_batch();
    }
    world_.all_reduce(sums);
    stats.loss = sum[0] / static_cast<double>(dp_);
    stats.tokens = static_cast<int64_t>(sum[1]);
    stats.samples = static_cast<int64_t>(sum[2]);
    stats.kept_frames = sum[3];
    stats.visual_samples = static_cast<int64_t>(sum[4]);
    stats.grad_norm = zero_->reduce_gradients();
    const double clip = recipe_.optimizer().clip_grad_norm();
    if (clip > 0) zero_->clip_gradients(clip, stats.grad_norm);
    stats.lr = recipe_.optimizer().lr() * schedule_(step_);
    if (std::isfinite(stats.grad_norm) && std::isfinite(stats.loss)) zero_->step(schedule_(step_));
    zero_->zero_grad();
    stats.seconds = std::chrono::duration<double>(Clock::now() - begin).count();
    return stats;
  }

  // A micro-batch whose answers were all cut by data.max_length (or had none) teaches nothing; the
  // loss over zero tokens is 0, so say it rather than train on silence.
  void warn_if_unsupervised(const Tensor& labels) {
    const Tensor l = labels.contiguous();
    const int64_t rows = l.size(0), cols = l.size(1);
    int64_t supervised = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 1; c < cols; ++c) supervised += l.data<int64_t>()[r * cols + c] != layers::kIgnoreIndex;
    if (supervised == 0 && unsupervised_warnings_++ < 5)
      LOG(WARNING) << "step " << step_ + 1 << ": a micro-batch with no supervised token (is data.max_length "
                   << recipe_.data().max_length() << " cutting off the answers?)";
  }

  double elapsed() const { return elapsed_before_ + std::chrono::duration<double>(Clock::now() - start_).count(); }

  void write_metrics(const StepStats& s, bool finite) {
    if (rank_ != 0) return;
    json line = {{"step", finite ? step_ : step_ + 1},
                 {"loss", std::isfinite(s.loss) ? json(s.loss) : json(nullptr)},
                 {"lr", s.lr},
                 {"grad_norm", std::isfinite(s.grad_norm) ? json(s.grad_norm) : json(nullptr)},
                 {"tokens_per_s", s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0},
                 {"samples_per_s", s.seconds > 0 ? static_cast<double>(s.samples) / s.seconds : 0.0},
                 {"epoch", epoch_position()},
                 {"kept_frames", s.visual_samples > 0 ? s.kept_frames / static_cast<double>(s.visual_samples) : 0.0},
                 {"elapsed_s", elapsed()}};
    metrics_ << line.dump() << "\n";
    metrics_.flush();
  }

  double epoch_position() const { return loader_->epoch_position(); }

  void print_progress(const StepStats& s) {
    window_seconds_ += s.seconds;
    window_steps_ += 1;
    if (step_ % recipe_.logging().every_steps() != 0 && step_ != total_steps_) return;
    const double per_step = window_seconds_ / static_cast<double>(window_steps_);
    console_ << "step " << step_ << "/" << total_steps_ << " (" << std::fixed << std::setprecision(1)
             << 100.0 * static_cast<double>(step_) / static_cast<double>(total_steps_) << "%)  loss "
             << std::setprecision(4) << s.loss << "  lr " << std::scientific << std::setprecision(2) << s.lr
             << std::fixed << "  |g| " << std::setprecision(3) << s.grad_norm << "  " << std::setprecision(0)
             << (s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0) << " tok/s  " << std::setprecision(1)
             << (s.seconds > 0 ? static_cast<double>(s.samples) / s.seconds : 0.0) << " samples/s  elapsed "
             << format_duration(elapsed()) << "  ETA "
             << format_duration(per_step * static_cast<double>(total_steps_ - step_)) << std::defaultfloat << std::endl;
    window_seconds_ = 0;
    window_steps_ = 0;
  }

  // Every rank writes its share (rank 0: the model, which every replica holds, and the run's
  // texts; each rank: its optimizer slices and its loader position), then rank 0 commits.
  void save() {
    const std::string dir = checkpoint_dir_.string();
    if (rank_ == 0) parallel::prepare_checkpoint_dir(dir, step_);
    world_.barrier();
    parallel::Checkpoint part;
    part.step = step_;
    if (rank_ == 0) {
      NamedTensors model;
      for (const auto& [name, t] : model_->named_parameters()) model.emplace_back(name, t.detach());
      part.tensors["model"] = std::move(model);
      const json trainer = {{"step", step_}, {"total_steps", total_steps_}, {"elapsed_s", elapsed()}, {"dp", dp_}};
      part.texts["trainer.json"] = trainer.dump(2) + "\n";
      part.texts["recipe.pb"] = recipes::recipe_to_text(recipe_);
    }
    const std::string stem = rank_name("optimizer-rank", rank_);
    NamedTensors optimizer;
    for (parallel::ZeroStateSlice& slice : zero_->state_slices()) {
      part.slices[stem][slice.name] = parallel::TensorSlice{
          .global_shape = Shape(slice.global_shape.begin(), slice.global_shape.end()), .flat_start = slice.flat_start};
      optimizer.emplace_back(slice.name, slice.values);
    }
    part.tensors[stem] = std::move(optimizer);
    json steps = json::object();
    for (const auto& [name, count] : zero_->steps()) steps[name] = count;
    const json rank = {{"loader", json::parse(loader_->state().to_json())}, {"adamw_steps", steps}};
    part.texts[rank_name("rank-", rank_, ".json")] = rank.dump(2) + "\n";
    const parallel::CheckpointPart written = parallel::write_checkpoint_part(dir, part);
    const std::vector<std::string> parts = parallel::all_gather_bytes(world_, written.serialize());
    if (rank_ == 0) {
      std::vector<parallel::CheckpointPart> all;
      for (size_t r = 0; r < parts.size(); ++r)
        all.push_back(parallel::CheckpointPart::parse(parts[r], str_cat("the checkpoint part of rank ", r)));
      parallel::commit_checkpoint(dir, step_, all);
    }
    world_.barrier();  // no rank goes on (or dies) before `latest` names the new step
    latest_ = (checkpoint_dir_ / parallel::checkpoint_dir_name(step_)).string();
    console_ << "checkpoint: " << *latest_ << std::endl;
  }

  void restore(const std::string& path) {
    const parallel::Checkpoint c = parallel::load_checkpoint(path);
    auto model = c.tensors.find("model");
    BVLLM_REQUIRE(model != c.tensors.end(), path, ": no model tensors");
    model_->load_state_dict(std::map<std::string, Tensor>(model->second.begin(), model->second.end()),
                            {.source = path + "/model.safetensors"});
    make_optimizer();  // over the parameter tensors load_state_dict just put in place

    auto text = c.texts.find("trainer.json");
    BVLLM_REQUIRE(text != c.texts.end(), path, ": no trainer.json");
    const std::string source = path + "/trainer.json";
    const json t = json::parse(text->second, nullptr, /*allow_exceptions=*/false);
    BVLLM_REQUIRE(t.is_object() && t.contains("step"), source, ": expected an object with step");
    step_ = t["step"].get<int64_t>();
    elapsed_before_ = t.value("elapsed_s", 0.0);
    const int saved_dp = t.value("dp", 1);

    // The ranks' files: AdamW step counts (any rank's count of a parameter is its count) and
    // loader positions (this rank's own on the same dp; else rank 0's, re-split by the loader).
    std::map<std::string, int64_t> steps;
    std::optional<data::LoaderState> loader;
    for (int r = 0; r < saved_dp; ++r) {
      const std::string name = rank_name("rank-", r, ".json");
      auto it = c.texts.find(name);
      BVLLM_REQUIRE(it != c.texts.end(), path, ": no ", name, " (trainer.json says the run had dp ", saved_dp, ")");
      const json j = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
      BVLLM_REQUIRE(j.is_object() && j.contains("loader") && j.contains("adamw_steps"), path, "/", name,
                    ": expected an object with loader and adamw_steps");
      for (const auto& [param, count] : j["adamw_steps"].items()) steps[param] = count.get<int64_t>();
      if (r == (saved_dp == dp_ ? rank_ : 0))
        loader = data::LoaderState::from_json(j["loader"].dump(), path + "/" + name);
    }
    zero_->load_state(
        [&](const std::string& name, int64_t start, int64_t length) -> std::optional<Tensor> {
          if (!parallel::find_global_shape(c, name)) return std::nullopt;
          return parallel::assemble_flat_range(c, name, start, length, DType::F32);
        },
        [&](const std::string& param) {
          auto it = steps.find(param);
          return it == steps.end() ? int64_t{0} : it->second;
        });
    loader_->restore(*loader);
    if (auto saved = c.texts.find("recipe.pb");
        saved != c.texts.end() && saved->second != recipes::recipe_to_text(recipe_) && rank_ == 0)
      LOG(WARNING) << "resuming " << path << " with a recipe that differs from the one it was saved with (" << path
                   << "/recipe.pb): the run continues, but is not the run that was stopped";
    BVLLM_REQUIRE(step_ <= total_steps_, path, ": step ", step_, " is past the recipe's ", total_steps_, " steps");
  }

  TrainOptions options_;
  std::unique_ptr<parallel::SelfCommunicator> self_;  // the world of a run without mpirun
  parallel::Communicator& world_;
  int rank_ = 0;
  int64_t dp_ = 1;
  std::ostream null_console_{nullptr};  // what ranks other than 0 print to
  std::ostream& console_;
  std::string source_;
  recipes::Recipe recipe_;
  fs::path run_dir_, checkpoint_dir_;
  std::optional<std::string> latest_;
  std::unique_ptr<Tokenizers> tokenizers_;
  std::unique_ptr<data::DataLoader> loader_;
  BuiltModel built_;
  std::shared_ptr<layers::BvllmForCausalLM> model_;
  std::unique_ptr<parallel::ZeroOptimizer> zero_;
  optim::Schedule schedule_;
  Generator gumbel_;
  std::ofstream metrics_;
  int64_t step_ = 0, total_steps_ = 0;
  Clock::time_point start_;
  double elapsed_before_ = 0, window_seconds_ = 0;
  int64_t window_steps_ = 0;
  int unsupervised_warnings_ = 0;
};

}  // namespace

TrainResult train(const TrainOptions& options) { return Trainer(options).run(); }

}  // namespace bvllm::train
