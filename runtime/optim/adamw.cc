#include "runtime/optim/adamw.h"

#include <glog/logging.h>

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/cpu/adamw.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw_math.h"

#if BVLLM_WITH_CUDA
#include <map>
#include <tuple>

#include "runtime/cuda/adamw.h"
#endif

namespace bvllm::optim {

namespace {

// The checks torch.optim.AdamW.__init__ makes (written so that NaN fails them too).
void check_lr(double lr) { BVLLM_REQUIRE(lr >= 0.0, "AdamW: invalid learning rate ", lr, " (expected >= 0)"); }
void check_weight_decay(double wd) { BVLLM_REQUIRE(wd >= 0.0, "AdamW: invalid weight_decay ", wd, " (expected >= 0)"); }
void check_options(const AdamWOptions& o) {
  check_lr(o.lr);
  BVLLM_REQUIRE(o.eps >= 0.0, "AdamW: invalid eps ", o.eps, " (expected >= 0)");
  BVLLM_REQUIRE(o.beta1 >= 0.0 && o.beta1 < 1.0, "AdamW: invalid beta1 ", o.beta1, " (expected in [0, 1))");
  BVLLM_REQUIRE(o.beta2 >= 0.0 && o.beta2 < 1.0, "AdamW: invalid beta2 ", o.beta2, " (expected in [0, 1))");
  check_weight_decay(o.weight_decay);
}

bool supported_dtype(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::F16; }

// Moments (and master) are f32 for half params, else the param's dtype.
DType state_dtype(DType param) { return is_half(param) ? DType::F32 : param; }

// A fresh contiguous tensor of `dtype` on `device` holding `src`'s values.
Tensor copy_as(const Tensor& src, DType dtype, Device device) {
  Tensor out = Tensor::empty(src.shape(), dtype, device);
  out.copy_(src);
  return out;
}

// The part of an update shared by both devices: checks the grad, creates the state at the first
// step (on the param's device) and advances the step. Returns the step's scalars, or nothing
// when the param has no grad (it is skipped and its step does not advance).
std::optional<AdamWScalars> begin_update(const Tensor& param, AdamWState& st, double lr, double weight_decay,
                                         const AdamWOptions& options) {
  const Tensor& grad = param.grad();
  if (!grad.defined()) return std::nullopt;
  BVLLM_REQUIRE(grad.shape() == param.shape(), "AdamW: grad ", shape_str(grad.shape()),
                " does not match its parameter ", shape_str(param.shape()));
  BVLLM_REQUIRE(grad.device() == param.device(), "AdamW: grad is on ", grad.device().str(), ", expected ",
                param.device().str());
  BVLLM_REQUIRE(is_floating(grad.dtype()), "AdamW: grad has dtype ", dtype_name(grad.dtype()));
  CHECK(param.is_contiguous()) << "AdamW: parameter became non-contiguous";

  const DType sdt = state_dtype(param.dtype());
  if (!st.exp_avg.defined()) {
    st.exp_avg = ops::zeros(param.shape(), sdt, param.device());
    st.exp_avg_sq = ops::zeros(param.shape(), sdt, param.device());
    if (is_half(param.dtype())) st.master = copy_as(param, DType::F32, param.device());
  }
  st.step += 1;
  return adamw_scalars(lr, options.beta1, options.beta2, options.eps, weight_decay, st.step);
}

#if BVLLM_WITH_CUDA
// A step's CUDA params, queued as they come and launched together: one multi-tensor launch per
// (device, param dtype, grad dtype) (runtime/cuda/adamw.h).
class CudaUpdates {
 public:
  void add(Tensor& param, AdamWState& st, const AdamWScalars& s) {
    // The grad as the CPU path takes it: a half param's own dtype or f32, else the param's dtype.
    const DType pdt = param.dtype(), gdt = is_half(pdt) && param.grad().dtype() == pdt ? pdt : state_dtype(pdt);
    const Tensor g = param.grad().to(gdt).contiguous();
    grads_.push_back(g);  // alive until its launch is queued
    batches_[{param.device().index, pdt, gdt}].push_back(cuda::AdamWTensor{
        .param = param.raw_data(),
        .grad = g.raw_data(),
        .exp_avg = st.exp_avg.raw_data(),
        .exp_avg_sq = st.exp_avg_sq.raw_data(),
        .master = st.master.defined() ? st.master.data<float>() : nullptr,
        .n = param.numel(),
        .scalars = s,
    });
  }

  void launch() {
    for (const auto& [key, tensors] : batches_)
      cuda::adamw(std::get<0>(key), std::get<1>(key), std::get<2>(key), tensors);
    batches_.clear();
    grads_.clear();
  }

 private:
  std::map<std::tuple<int, DType, DType>, std::vector<cuda::AdamWTensor>> batches_;
  std::vector<Tensor> grads_;
};
#endif

}  // namespace

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options) : options_(options) {
  check_options(options_);
  for (size_t g = 0; g < groups.size(); ++g) {
    ParamGroup& in = groups[g];
    const double lr = in.lr.value_or(options_.lr);
    const double wd = in.weight_decay.value_or(options_.weight_decay);
    check_lr(lr);
    check_weight_decay(wd);
    for (size_t i = 0; i < in.params.size(); ++i) {
      const Tensor& p = in.params[i];
      BVLLM_REQUIRE(p.defined(), "AdamW: parameter ", i, " of group ", g, " is undefined");
      BVLLM_REQUIRE(supported_dtype(p.dtype()), "AdamW: parameter ", i, " of group ", g, " has dtype ",
                    dtype_name(p.dtype()), " (expected f32, f64, bf16 or f16)");
      BVLLM_REQUIRE(p.requires_grad() && p.is_leaf(), "AdamW: parameter ", i, " of group ", g,
                    " must be a leaf that requires grad");
#if !BVLLM_WITH_CUDA
      BVLLM_REQUIRE(p.device().is_cpu(), "AdamW: parameter ", i, " of group ", g, " is on ", p.device().str(),
                    " (this build has no CUDA)");
#endif
      BVLLM_REQUIRE(p.is_contiguous(), "AdamW: parameter ", i, " of group ", g, " (", shape_str(p.shape()),
                    ") is not contiguous");
      const bool inserted = slot_index_.emplace(p.impl(), slots_.size()).second;
      BVLLM_REQUIRE(inserted, "AdamW: parameter ", i, " of group ", g, " appears more than once");
      slots_.push_back(Slot{p, AdamWState{}});
    }
    groups_.push_back(Group{std::move(in.params), lr, lr, wd});
  }
  BVLLM_REQUIRE(!slots_.empty(), "AdamW: got an empty parameter list");
}

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& options)
    : AdamW(std::vector<ParamGroup>{ParamGroup{std::move(params), std::nullopt, std::nullopt}}, options) {}

void AdamW::step() {
  NoGradGuard no_grad;
  size_t next = 0;  // slots_ is laid out group by group
#if BVLLM_WITH_CUDA
  // CPU params update as they come; CUDA params are queued and launched together at the end (and
  // also when a later param fails its checks, so that, as on the CPU, the params before it have
  // both advanced their step and been updated).
  CudaUpdates cuda_updates;
  try {
    for (const Group& group : groups_) {
      for (size_t i = 0; i < group.params.size(); ++i) {
        Slot& slot = slots_[next++];
        if (!slot.param.device().is_cuda()) {
          update(slot, group);
        } else if (auto s = begin_update(slot.param, slot.state, group.lr, group.weight_decay, options_)) {
          cuda_updates.add(slot.param, slot.state, *s);
        }
      }
    }
  } catch (...) {
    cuda_updates.launch();
    throw;
  }
  cuda_updates.launch();
#else
  for (const Group& group : groups_) {
    for (size_t i = 0; i < group.params.size(); ++i) update(slots_[next++], group);
  }
#endif
}

// The update of a CPU param (CUDA params go through CudaUpdates).
void AdamW::update(Slot& slot, const Group& group) {
  Tensor& param = slot.param;
  AdamWState& st = slot.state;
  const std::optional<AdamWScalars> scalars = begin_update(param, st, group.lr, group.weight_decay, options_);
  if (!scalars) return;
  const AdamWScalars& s = *scalars;
  const Tensor& grad = param.grad();
  const DType sdt = state_dtype(param.dtype());
  const int64_t n = param.numel();
  float* m32 = sdt == DType::F32 ? st.exp_avg.data<float>() : nullptr;
  float* v32 = sdt == DType::F32 ? st.exp_avg_sq.data<float>() : nullptr;

  switch (param.dtype()) {
    case DType::F32: {
      const Tensor g = grad.to(DType::F32).contiguous();
      cpu::adamw(param.data<float>(), g.data<float>(), m32, v32, n, s);
      break;
    }
    case DType::F64: {
      const Tensor g = grad.to(DType::F64).contiguous();
      cpu::adamw(param.data<double>(), g.data<double>(), st.exp_avg.data<double>(), st.exp_avg_sq.data<double>(), n, s);
      break;
    }
    case DType::BF16: {
      float* master = st.master.data<float>();
      if (grad.dtype() == DType::BF16) {
        const Tensor g = grad.contiguous();
        cpu::adamw(master, param.data<bf16>(), g.data<bf16>(), m32, v32, n, s);
      } else {
        const Tensor g = grad.to(DType::F32).contiguous();
        cpu::adamw(master, param.data<bf16>(), g.data<float>(), m32, v32, n, s);
      }
      break;
    }
    case DType::F16: {
      float* master = st.master.data<float>();
      if (grad.dtype() == DType::F16) {
        const Tensor g = grad.contiguous();
        cpu::adamw(master, param.data<f16>(), g.data<f16>(), m32, v32, n, s);
      } else {
        const Tensor g = grad.to(DType::F32).contiguous();
        cpu::adamw(master, param.data<f16>(), g.data<float>(), m32, v32, n, s);
      }
      break;
    }
    default: LOG(FATAL) << "AdamW: unsupported param dtype " << dtype_name(param.dtype());
  }
}

void AdamW::zero_grad() {
  for (Slot& slot : slots_) slot.param.set_grad(Tensor());
}

void AdamW::set_lr(double lr) {
  check_lr(lr);
  for (Group& g : groups_) g.lr = lr;
}

void AdamW::set_lr(size_t group, double lr) {
  BVLLM_REQUIRE(group < groups_.size(), "AdamW: group ", group, " out of range (", groups_.size(), " groups)");
  check_lr(lr);
  groups_[group].lr = lr;
}

void AdamW::set_lr_multiplier(double multiplier) {
  BVLLM_REQUIRE(multiplier >= 0.0, "AdamW: invalid lr multiplier ", multiplier, " (expected >= 0)");
  for (Group& g : groups_) g.lr = g.base_lr * multiplier;
}

const std::vector<Tensor>& AdamW::params(size_t group) const {
  BVLLM_REQUIRE(group < groups_.size(), "AdamW: group ", group, " out of range (", groups_.size(), " groups)");
  return groups_[group].params;
}

double AdamW::lr(size_t group) const {
  BVLLM_REQUIRE(group < groups_.size(), "AdamW: group ", group, " out of range (", groups_.size(), " groups)");
  return groups_[group].lr;
}

double AdamW::base_lr(size_t group) const {
  BVLLM_REQUIRE(group < groups_.size(), "AdamW: group ", group, " out of range (", groups_.size(), " groups)");
  return groups_[group].base_lr;
}

double AdamW::weight_decay(size_t group) const {
  BVLLM_REQUIRE(group < groups_.size(), "AdamW: group ", group, " out of range (", groups_.size(), " groups)");
  return groups_[group].weight_decay;
}

size_t AdamW::slot_of(const Tensor& param, const char* what) const {
  BVLLM_REQUIRE(param.defined(), "AdamW::", what, ": undefined parameter");
  auto it = slot_index_.find(param.impl());
  BVLLM_REQUIRE(it != slot_index_.end(), "AdamW::", what, ": tensor ", shape_str(param.shape()),
                " is not a parameter of this optimizer");
  return it->second;
}

const AdamWState* AdamW::state(const Tensor& param) const {
  const Slot& s = slots_[slot_of(param, "state")];
  return s.state.exp_avg.defined() ? &s.state : nullptr;
}

void AdamW::load_state(const Tensor& param, const AdamWState& state) {
  NoGradGuard no_grad;
  Slot& s = slots_[slot_of(param, "load_state")];
  const Shape& shape = s.param.shape();
  const DType sdt = state_dtype(s.param.dtype());
  BVLLM_REQUIRE(state.step >= 0, "AdamW::load_state: step ", state.step, " is negative");
  auto check = [&](const Tensor& t, const char* name) {
    BVLLM_REQUIRE(t.defined(), "AdamW::load_state: ", name, " is undefined");
    BVLLM_REQUIRE(t.shape() == shape, "AdamW::load_state: ", name, " has shape ", shape_str(t.shape()),
                  ", expected the parameter's ", shape_str(shape));
    BVLLM_REQUIRE(is_floating(t.dtype()), "AdamW::load_state: ", name, " has dtype ", dtype_name(t.dtype()));
  };
  check(state.exp_avg, "exp_avg");
  check(state.exp_avg_sq, "exp_avg_sq");
  AdamWState loaded;
  loaded.step = state.step;
  const Device device = s.param.device();  // the state lives beside its param
  loaded.exp_avg = copy_as(state.exp_avg.to(device), sdt, device);
  loaded.exp_avg_sq = copy_as(state.exp_avg_sq.to(device), sdt, device);
  if (is_half(s.param.dtype())) {
    if (state.master.defined()) {
      check(state.master, "master");
      loaded.master = copy_as(state.master.to(device), DType::F32, device);
    } else {
      loaded.master = copy_as(s.param, DType::F32, device);
    }
  } else {
    BVLLM_REQUIRE(!state.master.defined(), "AdamW::load_state: got a master copy for a ", dtype_name(s.param.dtype()),
                  " parameter (only bf16/f16 parameters have one)");
  }
  s.state = std::move(loaded);
}

}  // namespace bvllm::optim
