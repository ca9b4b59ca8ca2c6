#include "parallel/zero_optimizer.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::parallel {

// One trainable parameter: where it lies in its bucket, and the f32 view of its owned piece that
// AdamW updates.
struct ZeroOptimizer::Slot {
  std::string name;
  Tensor param;
  size_t group = 0, bucket = 0;
  int64_t offset = 0;  // of the parameter's first element in the bucket
  int64_t numel = 0;
  bool ready = false;       // its gradient of this micro-batch is in the bucket
  bool present = false;     // it got a gradient this step (on this rank; after reduce_gradients, on any)
  Tensor piece;             // leaf view of the bucket's master: the owned elements of this parameter
  int64_t piece_start = 0;  // flat index in the parameter of piece's first element
};

struct ZeroOptimizer::Bucket {
  DType dtype = DType::F32;  // of its parameters
  Device device;
  std::vector<size_t> slots;
  int64_t length = 0;              // padded: a multiple of dp
  int64_t lo = 0, hi = 0;          // the elements this rank updates (stage 0: all)
  int64_t own_lo = 0, own_hi = 0;  // the elements this rank owns (1/dp): its norm and checkpoint share
  Tensor grad;                     // full-size f32 accumulation buffer (stage 0, 1, 2 per step)
  Tensor shard_grad;               // f32 [hi - lo]: the reduced gradients of the updated elements
  Tensor master;                   // f32 [hi - lo]: the updated elements' values
  Tensor staging, received;        // stage 2 per micro-batch: this micro-batch's bucket and its reduced shard
  std::unique_ptr<Work> work;      // the bucket's collective in flight
  size_t ready = 0;                // slots whose gradient is in
  bool launched = false;
  bool accumulated = false;  // stage 2 per micro-batch: shard_grad holds a reduced micro-batch
};

struct ZeroOptimizer::Shared {
  ZeroOptimizer* owner = nullptr;
};

namespace {

double sum_of_squares(const Tensor& t) {
  if (t.numel() == 0) return 0.0;
  if (t.device().is_cpu()) {
    const Tensor c = t.contiguous();
    const float* x = c.data<float>();
    double s = 0.0;
    for (int64_t i = 0; i < c.numel(); ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    return s;
  }
  const Tensor d = t.to(DType::F64);
  return ops::sum(ops::mul(d, d)).to(Device::cpu()).item<double>();
}

// [a, b) ∩ [c, d), empty when they do not meet.
std::pair<int64_t, int64_t> intersect(int64_t a, int64_t b, int64_t c, int64_t d) {
  const int64_t lo = std::max(a, c), hi = std::min(b, d);
  return {lo, std::max(lo, hi)};
}

}  // namespace

ZeroOptimizer::ZeroOptimizer(std::vector<ZeroParamGroup> groups, Communicator& dp, Communicator& grad_stats,
                             const ZeroOptions& options)
    : options_(options), dp_(dp), grad_stats_(grad_stats), shared_(std::make_shared<Shared>()) {
  BVLLM_REQUIRE(options_.stage >= 0 && options_.stage <= 2, "ZeRO: stage must be 0, 1 or 2, got ", options_.stage);
  BVLLM_REQUIRE(options_.bucket_elements >= 1, "ZeRO: bucket_elements must be >= 1, got ", options_.bucket_elements);
  const int64_t n = dp_.size(), r = dp_.rank();
  NoGradGuard no_grad;

  // Buckets: per group, the parameters in reverse order, closed once they hold bucket_elements.
  for (size_t g = 0; g < groups.size(); ++g) {
    auto& params = groups[g].params;
    Bucket* open = nullptr;
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      const auto& [name, p] = *it;
      BVLLM_REQUIRE(p.defined() && p.is_leaf() && p.requires_grad() && p.is_contiguous(), "ZeRO: parameter ", name,
                    " must be a contiguous leaf that requires grad");
      BVLLM_REQUIRE(is_floating(p.dtype()), "ZeRO: parameter ", name, " has dtype ", dtype_name(p.dtype()));
      if (open == nullptr || open->length >= options_.bucket_elements || open->dtype != p.dtype() ||
          open->device != p.device()) {
        open = &buckets_.emplace_back();
        open->dtype = p.dtype();
        open->device = p.device();
      }
      Slot& s = slots_.emplace_back();
      s.name = name;
      s.param = p;
      s.group = g;
      s.bucket = buckets_.size() - 1;
      s.offset = open->length;
      s.numel = p.numel();
      open->slots.push_back(slots_.size() - 1);
      open->length += p.numel();
    }
  }
  BVLLM_REQUIRE(!slots_.empty(), "ZeRO: no trainable parameters");

  // Every replica starts from dp rank 0's values.
  for (Slot& s : slots_) dp_.broadcast(s.param, 0);

  // Ownership, buffers and the owned pieces AdamW updates.
  std::vector<optim::ParamGroup> adamw_groups(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) adamw_groups[g].weight_decay = groups[g].weight_decay;
  for (Bucket& b : buckets_) {
    b.length = (b.length + n - 1) / n * n;
    b.own_lo = b.length / n * r;
    b.own_hi = b.own_lo + b.length / n;
    if (options_.stage == 0) {
      b.lo = 0, b.hi = b.length;
    } else {
      b.lo = b.own_lo, b.hi = b.own_hi;
    }
    b.master = ops::zeros({b.hi - b.lo}, DType::F32, b.device);
    if (full_buffers()) {
      b.grad = ops::zeros({b.length}, DType::F32, b.device);
      b.shard_grad =
          options_.stage == 2 ? ops::zeros({b.hi - b.lo}, DType::F32, b.device) : b.grad.narrow(0, b.lo, b.hi - b.lo);
    } else {
      b.shard_grad = ops::zeros({b.hi - b.lo}, DType::F32, b.device);
    }
    for (size_t i : b.slots) {
      Slot& s = slots_[i];
      const auto [lo, hi] = intersect(s.offset, s.offset + s.numel, b.lo, b.hi);
      if (hi == lo) continue;
      s.piece_start = lo - s.offset;
      s.piece = b.master.narrow(0, lo - b.lo, hi - lo);
      s.piece.copy_(s.param.reshape({s.numel}).narrow(0, s.piece_start, hi - lo));
      s.piece.set_requires_grad(true);
      adamw_groups[s.group].params.push_back(s.piece);
    }
  }
  std::erase_if(adamw_groups, [](const optim::ParamGroup& g) { return g.params.empty(); });
  if (!adamw_groups.empty()) adamw_ = std::make_unique<optim::AdamW>(std::move(adamw_groups), options_.adamw);

  // The hooks reach the optimizer through `shared_`, which the destructor detaches.
  shared_->owner = this;
  for (size_t i = 0; i < slots_.size(); ++i) {
    std::shared_ptr<Shared> shared = shared_;
    slots_[i].param.register_grad_ready_hook([shared, i](Tensor& leaf) {
      if (shared->owner != nullptr) shared->owner->on_grad_ready(i, leaf);
    });
  }
}

ZeroOptimizer::~ZeroOptimizer() { shared_->owner = nullptr; }

bool ZeroOptimizer::full_buffers() const { return options_.stage < 2 || options_.reduce == GradReduce::PerStep; }

void ZeroOptimizer::begin_micro_batch(bool last) {
  BVLLM_REQUIRE(!in_micro_batch_, "ZeRO: begin_micro_batch twice without end_micro_batch");
  in_micro_batch_ = true;
  last_micro_batch_ = last;
  next_launch_ = 0;
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.launched = false;
  }
  for (Slot& s : slots_) s.ready = false;
}

void ZeroOptimizer::on_grad_ready(size_t index, Tensor& leaf) {
  if (!in_micro_batch_) return;  // a backward outside the training step (tests, probes): leave .grad alone
  Slot& s = slots_[index];
  BVLLM_REQUIRE(!s.ready, "ZeRO: parameter ", s.name, " received two gradients in one micro-batch");
  NoGradGuard no_grad;
  Bucket& b = buckets_[s.bucket];
  const Tensor g = leaf.grad().reshape({s.numel}).to(DType::F32);
  leaf.set_grad(Tensor());
  if (full_buffers()) {
    Tensor into = b.grad.narrow(0, s.offset, s.numel);
    into.copy_(ops::add(into, g));
  } else {
    if (!b.staging.defined()) {
      b.staging = ops::zeros({b.length}, DType::F32, b.device);
      staging_bytes_ += b.length * 4;
      peak_staging_bytes_ = std::max(peak_staging_bytes_, staging_bytes_);
    }
    b.staging.narrow(0, s.offset, s.numel).copy_(g);
  }
  s.ready = true;
  s.present = true;
  b.ready += 1;
  launch_complete_buckets();
  progress();
}

// Launches, in bucket order, every bucket that is complete.
void ZeroOptimizer::launch_complete_buckets() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].ready == buckets_[next_launch_].slots.size()) {
    launch(buckets_[next_launch_]);
    ++next_launch_;
  }
}

void ZeroOptimizer::launch(Bucket& b) {
  if (full_buffers() && !last_micro_batch_) {
    b.launched = true;  // earlier micro-batches only accumulate
    return;
  }
  // Sums in rank order (ordered_reduce_scatter_async): the same bits as one process adding the
  // micro-batches in turn.
  if (options_.stage < 2) {
    b.received = Tensor::empty({b.length / dp_.size()}, DType::F32, b.device);
    b.work = ordered_reduce_scatter_async(dp_, b.grad, b.received);
  } else if (full_buffers()) {
    b.work = ordered_reduce_scatter_async(dp_, b.grad, b.shard_grad);
  } else {
    if (!b.staging.defined()) {  // no parameter of the bucket had a gradient: join with zeros
      b.staging = ops::zeros({b.length}, DType::F32, b.device);
      staging_bytes_ += b.length * 4;
      peak_staging_bytes_ = std::max(peak_staging_bytes_, staging_bytes_);
    }
    b.received = Tensor::empty({b.hi - b.lo}, DType::F32, b.device);
    b.work = ordered_reduce_scatter_async(dp_, b.staging, b.received);
  }
  b.launched = true;
}

// Lets MPI advance the collectives in flight (a CPU transport progresses inside MPI calls).
void ZeroOptimizer::progress() {
  for (Bucket& b : buckets_)
    if (b.work != nullptr) b.work->test();
}

void ZeroOptimizer::complete(Bucket& b) {
  if (b.work == nullptr) return;
  b.work->wait();
  b.work.reset();
  if (options_.stage < 2) {  // every rank holds the whole reduced gradient, as plain data parallelism
    dp_.all_gather(b.received, b.grad);
    b.received = Tensor();
  } else if (!full_buffers()) {
    NoGradGuard no_grad;
    if (b.accumulated) {
      b.shard_grad.copy_(ops::add(b.shard_grad, b.received));
    } else {
      b.shard_grad.copy_(b.received);
      b.accumulated = true;
    }
    b.received = Tensor();
    b.staging = Tensor();
    staging_bytes_ -= b.length * 4;
  }
}

void ZeroOptimizer::end_micro_batch() {
  BVLLM_REQUIRE(in_micro_batch_, "ZeRO: end_micro_batch without begin_micro_batch");
  // Buckets still waiting for a parameter that got no gradient go now, in order.
  for (; next_launch_ < buckets_.size(); ++next_launch_) launch(buckets_[next_launch_]);
  for (Bucket& b : buckets_) complete(b);
  in_micro_batch_ = false;
}

double ZeroOptimizer::reduce_gradients() {
  BVLLM_REQUIRE(!in_micro_batch_, "ZeRO: reduce_gradients inside a micro-batch");
  BVLLM_REQUIRE(!reduced_, "ZeRO: reduce_gradients twice in one step");
  reduced_ = true;
  NoGradGuard no_grad;
  // Whether each parameter got a gradient anywhere: torch skips a parameter without one.
  Tensor present = Tensor::empty({static_cast<int64_t>(slots_.size())}, DType::U8);
  for (size_t i = 0; i < slots_.size(); ++i) present.data<uint8_t>()[i] = slots_[i].present ? 1 : 0;
  dp_.all_reduce(present, ReduceOp::Max);
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i].present = present.data<uint8_t>()[i] != 0;

  // The mean over replicas, and Σ g² over the elements this rank owns.
  const double scale = 1.0 / static_cast<double>(dp_.size());
  Tensor squares = Tensor::empty({1}, DType::F64);
  double& local = squares.data<double>()[0];
  local = 0.0;
  for (Bucket& b : buckets_) {
    if (dp_.size() > 1) b.shard_grad.copy_(ops::mul(b.shard_grad, scale));
    local += sum_of_squares(b.shard_grad.narrow(0, b.own_lo - b.lo, b.own_hi - b.own_lo));
  }
  grad_stats_.all_reduce(squares, ReduceOp::Sum);
  return std::sqrt(squares.data<double>()[0]);
}

void ZeroOptimizer::clip_gradients(double max_norm, double norm) {
  BVLLM_REQUIRE(reduced_, "ZeRO: clip_gradients before reduce_gradients");
  const double coef = max_norm / (norm + 1e-6);
  if (!(coef < 1.0) && !std::isnan(coef)) return;  // as torch: scaling by 1 changes nothing
  NoGradGuard no_grad;
  for (Bucket& b : buckets_) b.shard_grad.copy_(ops::mul(b.shard_grad, coef));
}

void ZeroOptimizer::step(double lr_multiplier) {
  BVLLM_REQUIRE(reduced_, "ZeRO: step before reduce_gradients");
  NoGradGuard no_grad;
  if (adamw_ != nullptr) {
    for (Slot& s : slots_) {
      if (!s.piece.defined() || !s.present) continue;
      const Bucket& b = buckets_[s.bucket];
      s.piece.set_grad(b.shard_grad.narrow(0, s.offset + s.piece_start - b.lo, s.piece.numel()));
    }
    adamw_->set_lr_multiplier(lr_multiplier);
    adamw_->step();
    for (Slot& s : slots_)
      if (s.piece.defined()) s.piece.set_grad(Tensor());
  }
  publish();
}

// Copies the updated values into the parameters: this rank's own (stage 0), or everyone's
// gathered (stage 1, 2).
void ZeroOptimizer::publish() {
  for (Bucket& b : buckets_) {
    Tensor full;
    if (options_.stage == 0) {
      full = b.master;
    } else {
      const Tensor mine = b.master.to(b.dtype).contiguous();
      full = Tensor::empty({b.length}, b.dtype, b.device);
      dp_.all_gather(mine, full);
    }
    for (size_t i : b.slots) {
      Slot& s = slots_[i];
      if (!s.present) continue;
      s.param.reshape({s.numel}).copy_(full.narrow(0, s.offset, s.numel));
    }
  }
}

void ZeroOptimizer::zero_grad() {
  NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    if (b.grad.defined()) b.grad.zero_();
    if (options_.stage == 2) b.shard_grad.zero_();
    b.accumulated = false;
  }
  for (Slot& s : slots_) {
    s.present = false;
    s.param.set_grad(Tensor());
  }
  reduced_ = false;
}

std::vector<ZeroStateSlice> ZeroOptimizer::state_slices() const {
  std::vector<ZeroStateSlice> out;
  if (adamw_ == nullptr) return out;
  for (const Slot& s : slots_) {
    if (!s.piece.defined()) continue;
    const optim::AdamWState* st = adamw_->state(s.piece);
    if (st == nullptr) continue;
    const Bucket& b = buckets_[s.bucket];
    // Only the owned part: stage 0 updates every element on every rank, but each is saved once.
    const auto [lo, hi] =
        intersect(s.offset + s.piece_start, s.offset + s.piece_start + s.piece.numel(), b.own_lo, b.own_hi);
    if (hi == lo) continue;
    const int64_t at = lo - (s.offset + s.piece_start);
    const std::vector<int64_t> shape(s.param.shape().begin(), s.param.shape().end());
    out.push_back({s.name + ".exp_avg", shape, lo - s.offset, st->exp_avg.narrow(0, at, hi - lo)});
    out.push_back({s.name + ".exp_avg_sq", shape, lo - s.offset, st->exp_avg_sq.narrow(0, at, hi - lo)});
    if (is_half(s.param.dtype()))
      out.push_back({s.name + ".master", shape, lo - s.offset, s.piece.narrow(0, at, hi - lo)});
  }
  return out;
}

std::vector<std::pair<std::string, int64_t>> ZeroOptimizer::steps() const {
  // Every piece of a parameter steps together (presence is global), so any rank's count is the
  // count; a parameter this rank has no piece of is reported by a rank that has one.
  std::vector<std::pair<std::string, int64_t>> out;
  if (adamw_ == nullptr) return out;
  for (const Slot& s : slots_) {
    if (!s.piece.defined()) continue;
    if (const optim::AdamWState* st = adamw_->state(s.piece); st != nullptr && st->step > 0)
      out.emplace_back(s.name, st->step);
  }
  return out;
}

void ZeroOptimizer::load_state(const std::function<std::optional<Tensor>(const std::string&, int64_t, int64_t)>& read,
                               const std::function<int64_t(const std::string&)>& step) {
  NoGradGuard no_grad;
  for (Slot& s : slots_) {
    if (!s.piece.defined()) continue;
    // The master from the parameters (loaded already), or the saved f32 master of a half param.
    const int64_t len = s.piece.numel();
    std::optional<Tensor> master;
    if (is_half(s.param.dtype())) master = read(s.name + ".master", s.piece_start, len);
    s.piece.copy_(master ? *master : s.param.reshape({s.numel}).narrow(0, s.piece_start, len));
    const int64_t count = step(s.name);
    if (count <= 0) continue;
    std::optional<Tensor> m = read(s.name + ".exp_avg", s.piece_start, len);
    std::optional<Tensor> v = read(s.name + ".exp_avg_sq", s.piece_start, len);
    BVLLM_REQUIRE(m && v, "ZeRO: the checkpoint has step ", count, " for ", s.name,
                  " but not its exp_avg and exp_avg_sq");
    adamw_->load_state(s.piece, optim::AdamWState{.step = count, .exp_avg = *m, .exp_avg_sq = *v, .master = Tensor()});
  }
}

ZeroMemory ZeroOptimizer::memory() const {
  ZeroMemory m;
  for (const Bucket& b : buckets_) {
    if (b.grad.defined()) m.grad_bytes += b.grad.numel() * 4;
    if (options_.stage == 2) m.grad_bytes += b.shard_grad.numel() * 4;
    m.owned_elements += b.hi - b.lo;
  }
  for (const Slot& s : slots_) {
    m.total_elements += s.numel;
    if (!s.piece.defined()) continue;
    const int64_t n = s.piece.numel();
    m.state_bytes += 2 * n * 4;                            // exp_avg, exp_avg_sq
    if (is_half(s.param.dtype())) m.state_bytes += n * 4;  // the f32 master
  }
  m.peak_staging_bytes = peak_staging_bytes_;
  return m;
}

}  // namespace bvllm::parallel
