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
#include "recipes/recipe.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "runtime/optim/clip.h"
#include "runtime/optim/schedule.h"
#include "runtime/rng.h"
#include "tools/train/model_builder.h"

namespace bvllm::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The Gumbel noise of frame selection (the model builder draws init and LoRA from streams 1 and 2).
constexpr uint64_t kGumbelStream = 0;
// Consecutive samples that fail to load before the run gives up.
constexpr int kMaxSkippedBatches = 16;

json generator_to_json(const Generator& g) { return {{"seed", g.seed}, {"stream", g.stream}, {"offset", g.offset}}; }

Generator generator_from_json(const json& j, const std::string& source, const char* field) {
  BVLLM_REQUIRE(j.is_object() && j.contains("seed") && j.contains("stream") && j.contains("offset"), source, ": ",
                field, ": expected {\"seed\", \"stream\", \"offset\"}");
  return Generator{
      .seed = j["seed"].get<uint64_t>(), .stream = j["stream"].get<uint64_t>(), .offset = j["offset"].get<uint64_t>()};
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
      : options_(options), console_(options.console != nullptr ? *options.console : std::cerr) {}

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
      if (options_.kill_after_step > 0 && step_ == options_.kill_after_step) {
        console_ << "bvllm_train: --debug_kill_after_step " << step_ << ": SIGKILL" << std::endl;
        std::raise(SIGKILL);
      }
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
    recipes::validate(recipe_, source_, {.world = 1});
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
    loader_ = std::make_unique<data::DataLoader>(loader_options(recipe_), tokenizers_->qwen, tokenizers_->bert);
    const int64_t per_step = recipe_.batch().micro_batch() * recipe_.batch().grad_accum();
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
    gumbel_ = Generator{.seed = recipe_.seed(), .stream = kGumbelStream};
    manual_seed(recipe_.seed());  // dropout

    fs::create_directories(run_dir_);
    if (options_.resume) {
      restore(*latest_);
      truncate_metrics(run_dir_ / "metrics.jsonl", step_);
    } else {
      std::ofstream(run_dir_ / "metrics.jsonl", std::ios::trunc);
    }
    write_file_atomically(run_dir_ / "recipe.pb", recipes::recipe_to_text(recipe_));
    metrics_.open(run_dir_ / "metrics.jsonl", std::ios::app);
    BVLLM_REQUIRE(metrics_, (run_dir_ / "metrics.jsonl").string(), ": cannot write");

    int64_t trainable = 0;
    for (const auto& [name, t] : model_->named_trainable_parameters()) trainable += t.numel();
    console_ << "bvllm_train: " << source_ << " (" << recipe_.name() << "): " << model_->num_parameters()
             << " parameters, " << trainable << " trainable in " << built_.trainable.size() << " tensors"
             << (built_.lora_modules > 0 ? str_cat(", LoRA on ", built_.lora_modules, " linears") : std::string())
             << "; " << loader_->samples_per_epoch() << " samples per epoch; " << total_steps_ << " steps of "
             << per_step << " samples; " << omp_get_max_threads() << " threads; run dir " << run_dir_.string()
             << (options_.resume ? str_cat("; resumed at step ", step_) : std::string()) << std::endl;
    if (recipe_.precision().compute() == recipes::BF16)
      LOG(INFO) << "precision.compute BF16: the CPU computes in f32 (see tools/train/trainer.h)";
    start_ = Clock::now();
  }

  // AdamW with the HF Trainer's two groups: weight decay on matrices, none on biases and norms.
  void make_optimizer() {
    params_.clear();
    names_.clear();
    optim::ParamGroup decay, no_decay;
    decay.weight_decay = recipe_.optimizer().weight_decay();
    no_decay.weight_decay = 0.0;
    for (const auto& [name, t] : model_->named_trainable_parameters()) {
      (t.dim() >= 2 ? decay : no_decay).params.push_back(t);
      params_.push_back(t);
      names_.push_back(name);
    }
    std::vector<optim::ParamGroup> groups;
    if (!decay.params.empty()) groups.push_back(decay);
    if (!no_decay.params.empty()) groups.push_back(no_decay);
    const recipes::Optimizer& o = recipe_.optimizer();
    optimizer_ = std::make_unique<optim::AdamW>(
        groups,
        optim::AdamWOptions{
            .lr = o.lr(), .beta1 = o.beta1(), .beta2 = o.beta2(), .eps = o.eps(), .weight_decay = o.weight_decay()});
  }

  std::vector<layers::BvllmSample> next_micro_batch() {
    for (int skipped = 0;; ++skipped) {
      try {
        std::vector<data::LoadedSample> loaded = loader_->next_batch();
        std::vector<layers::BvllmSample> samples;
        for (data::LoadedSample& s : loaded) {
          layers::BvllmSample& sample = samples.emplace_back();
          sample.ids = std::move(s.ids);
          sample.labels = std::move(s.labels);
          sample.pixels = std::move(s.pixels);
          sample.bert_ids = std::move(s.bert_ids);
          sample.bert_mask = std::move(s.bert_mask);
        }
        return samples;
      } catch (const Error& e) {
        BVLLM_REQUIRE(skipped + 1 < kMaxSkippedBatches, "bvllm_train: ", kMaxSkippedBatches,
                      " batches in a row failed to load; the last: ", e.what());
        LOG(WARNING) << "skipping a batch: " << e.what();
      }
    }
  }

  StepStats train_step() {
    const auto begin = Clock::now();
    StepStats stats;
    const int64_t accum = recipe_.batch().grad_accum();
    for (int64_t micro = 0; micro < accum; ++micro) {
      const std::vector<layers::BvllmSample> samples = next_micro_batch();
      layers::BvllmOutput out = model_->forward(samples, {.generator = &gumbel_});
      BVLLM_REQUIRE(out.loss.defined(), "bvllm_train: a micro-batch without labels");
      warn_if_unsupervised(out.labels);
      const double loss = out.loss.item<float>();
      stats.loss += loss / static_cast<double>(accum);
      for (int64_t n : out.lengths) stats.tokens += n;
      for (const layers::VisualSelection& v : out.visual) {
        if (v.tokens == 0) continue;
        stats.kept_frames += static_cast<double>(v.kept.size());
        stats.visual_samples += 1;
      }
      stats.samples += static_cast<int64_t>(samples.size());
      if (!std::isfinite(loss)) {  // nothing to learn from; the caller stops the run
        optimizer_->zero_grad();
        stats.seconds = std::chrono::duration<double>(Clock::now() - begin).count();
        return stats;
      }
      ops::mul(out.loss, 1.0 / static_cast<double>(accum)).backward();
    }
    const double clip = recipe_.optimizer().clip_grad_norm();
    stats.grad_norm = clip > 0 ? optim::clip_grad_norm(params_, clip) : optim::grad_norm(params_);
    stats.lr = recipe_.optimizer().lr() * schedule_(step_);
    if (std::isfinite(stats.grad_norm)) {
      optimizer_->set_lr_multiplier(schedule_(step_));
      optimizer_->step();
    }
    optimizer_->zero_grad();
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

  void save() {
    parallel::Checkpoint c;
    c.step = step_;
    NamedTensors model;
    for (const auto& [name, t] : model_->named_parameters()) model.emplace_back(name, t.detach());
    c.tensors["model"] = std::move(model);
    NamedTensors opt;
    for (size_t i = 0; i < params_.size(); ++i) {
      const optim::AdamWState* s = optimizer_->state(params_[i]);
      if (s == nullptr) continue;
      opt.emplace_back(names_[i] + ".exp_avg", s->exp_avg);
      opt.emplace_back(names_[i] + ".exp_avg_sq", s->exp_avg_sq);
      if (s->master.defined()) opt.emplace_back(names_[i] + ".master", s->master);
      Tensor step = Tensor::empty({1}, DType::I64);
      step.data<int64_t>()[0] = s->step;
      opt.emplace_back(names_[i] + ".step", step);
    }
    c.tensors["optimizer"] = std::move(opt);
    const json trainer = {{"step", step_},
                          {"total_steps", total_steps_},
                          {"elapsed_s", elapsed()},
                          {"gumbel_generator", generator_to_json(gumbel_)},
                          {"default_generator", generator_to_json(default_generator())},
                          {"loader", json::parse(loader_->state().to_json())}};
    c.texts["trainer.json"] = trainer.dump(2) + "\n";
    c.texts["recipe.pb"] = recipes::recipe_to_text(recipe_);
    latest_ = parallel::save_checkpoint(checkpoint_dir_.string(), c);
    console_ << "checkpoint: " << *latest_ << std::endl;
  }

  void restore(const std::string& path) {
    const parallel::Checkpoint c = parallel::load_checkpoint(path);
    auto model = c.tensors.find("model");
    BVLLM_REQUIRE(model != c.tensors.end(), path, ": no model tensors");
    model_->load_state_dict(std::map<std::string, Tensor>(model->second.begin(), model->second.end()),
                            {.source = path + "/model.safetensors"});
    make_optimizer();  // over the parameter tensors load_state_dict just put in place
    std::map<std::string, Tensor> opt;
    if (auto it = c.tensors.find("optimizer"); it != c.tensors.end()) opt.insert(it->second.begin(), it->second.end());
    for (size_t i = 0; i < params_.size(); ++i) {
      auto m = opt.find(names_[i] + ".exp_avg");
      if (m == opt.end()) continue;  // not updated yet
      auto v = opt.find(names_[i] + ".exp_avg_sq");
      auto n = opt.find(names_[i] + ".step");
      BVLLM_REQUIRE(v != opt.end() && n != opt.end(), path, "/optimizer.safetensors: ", names_[i],
                    " has exp_avg but no exp_avg_sq or step");
      optim::AdamWState state;
      state.step = n->second.data<int64_t>()[0];
      state.exp_avg = m->second;
      state.exp_avg_sq = v->second;
      if (auto master = opt.find(names_[i] + ".master"); master != opt.end()) state.master = master->second;
      optimizer_->load_state(params_[i], state);
    }
    auto text = c.texts.find("trainer.json");
    BVLLM_REQUIRE(text != c.texts.end(), path, ": no trainer.json");
    const std::string source = path + "/trainer.json";
    const json t = json::parse(text->second, nullptr, /*allow_exceptions=*/false);
    BVLLM_REQUIRE(t.is_object() && t.contains("step") && t.contains("loader"), source,
                  ": expected an object with step and loader");
    step_ = t["step"].get<int64_t>();
    elapsed_before_ = t.value("elapsed_s", 0.0);
    gumbel_ = generator_from_json(t["gumbel_generator"], source, "gumbel_generator");
    default_generator() = generator_from_json(t["default_generator"], source, "default_generator");
    loader_->restore(data::LoaderState::from_json(t["loader"].dump(), source));
    if (auto saved = c.texts.find("recipe.pb");
        saved != c.texts.end() && saved->second != recipes::recipe_to_text(recipe_))
      LOG(WARNING) << "resuming " << path << " with a recipe that differs from the one it was saved with (" << path
                   << "/recipe.pb): the run continues, but is not the run that was stopped";
    BVLLM_REQUIRE(step_ <= total_steps_, path, ": step ", step_, " is past the recipe's ", total_steps_, " steps");
  }

  TrainOptions options_;
  std::ostream& console_;
  std::string source_;
  recipes::Recipe recipe_;
  fs::path run_dir_, checkpoint_dir_;
  std::optional<std::string> latest_;
  std::unique_ptr<Tokenizers> tokenizers_;
  std::unique_ptr<data::DataLoader> loader_;
  BuiltModel built_;
  std::shared_ptr<layers::BvllmForCausalLM> model_;
  std::vector<Tensor> params_;
  std::vector<std::string> names_;
  std::unique_ptr<optim::AdamW> optimizer_;
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
