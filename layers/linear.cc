#include "layers/linear.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, DType dtype)
    : in_(in_features), out_(out_features) {
  BVLLM_REQUIRE(in_features > 0 && out_features > 0, "Linear: features must be positive, got in ", in_features,
                ", out ", out_features);
  weight_ = empty_parameter({out_features, in_features}, dtype);
  register_parameter("weight", &weight_);
  if (bias) {
    bias_ = empty_parameter({out_features}, dtype);
    register_parameter("bias", &bias_);
  }
}

Tensor Linear::forward(const Tensor& x) const {
  Tensor y = ops::linear(x, weight_, bias_);
  if (!has_lora()) return y;
  // peft: result + lora_B(lora_A(dropout(x))) * scaling, with x cast to the adapter's dtype.
  Tensor xa = x.to(lora_A_->weight().dtype());
  xa = ops::dropout(xa, lora_.dropout, is_training(), default_generator());
  Tensor delta = ops::mul(lora_B_->forward(lora_A_->forward(xa)), lora_scale_);
  return ops::add(y, delta.to(y.dtype()));
}

void Linear::add_lora(const LoraOptions& options, Generator& gen) {
  BVLLM_REQUIRE(!has_lora(), "add_lora: this Linear already has an adapter");
  BVLLM_REQUIRE(options.rank > 0, "add_lora: rank must be positive, got ", options.rank);
  BVLLM_REQUIRE(options.dropout >= 0 && options.dropout < 1, "add_lora: dropout must be in [0, 1), got ",
                options.dropout);
  lora_ = options;
  lora_scale_ = options.alpha / static_cast<double>(options.rank);
  const DType dtype = weight_.dtype();
  {
    ParameterDeviceScope on_weight_device(weight_.device());
    lora_A_ = register_module("lora_A", std::make_shared<Linear>(in_, options.rank, false, dtype));
    lora_B_ = register_module("lora_B", std::make_shared<Linear>(options.rank, out_, false, dtype));
  }
  if (!weight_.device().is_meta()) init_lora(gen);  // a meta model has shapes only
}

void Linear::init_lora(Generator& gen) {
  // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / in)
  // = 1 / sqrt(in).
  NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
  Tensor& a = lora_A_->weight();
  a.copy_(ops::uniform(a.shape(), gen, -bound, bound, DType::F32));
  lora_B_->weight().zero_();
}

void Linear::merge_lora() {
  BVLLM_REQUIRE(has_lora(), "merge_lora: this Linear has no adapter");
  NoGradGuard no_grad;
  Tensor a = lora_A_->weight().to(DType::F32), b = lora_B_->weight().to(DType::F32);
  Tensor delta = ops::mul(ops::matmul(b, a), lora_scale_);
  // peft rounds the delta to the adapter's dtype before adding it.
  delta = delta.to(lora_A_->weight().dtype()).to(DType::F32);
  weight_.copy_(ops::add(weight_.to(DType::F32), delta));
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_A_.reset();
  lora_B_.reset();
  lora_scale_ = 0.0;
}

void Linear::reset_parameters(Generator& gen, double std) {
  NoGradGuard no_grad;
  weight_.copy_(ops::normal(weight_.shape(), gen, 0.0, std, DType::F32));
  if (bias_.defined()) bias_.zero_();
  if (has_lora()) init_lora(gen);
}

int64_t add_lora(Module& root, const NamePattern& modules, const LoraOptions& options, Generator& gen) {
  std::vector<Linear*> targets;
  for (auto& [name, module] : root.named_modules()) {
    auto* linear = dynamic_cast<Linear*>(module);
    const bool adapter = name.ends_with("lora_A") || name.ends_with("lora_B");
    if (linear != nullptr && !adapter && modules.matches(name)) targets.push_back(linear);
  }
  for (Linear* linear : targets) linear->add_lora(options, gen);  // after the walk: it adds modules
  return static_cast<int64_t>(targets.size());
}

int64_t merge_lora(Module& root) {
  std::vector<Linear*> targets;
  for (auto& [name, module] : root.named_modules()) {
    auto* linear = dynamic_cast<Linear*>(module);
    if (linear != nullptr && linear->has_lora()) targets.push_back(linear);
  }
  for (Linear* linear : targets) linear->merge_lora();
  return static_cast<int64_t>(targets.size());
}

bool has_lora(Module& root) {
  for (auto& [name, module] : root.named_modules()) {
    auto* linear = dynamic_cast<Linear*>(module);
    if (linear != nullptr && linear->has_lora()) return true;
  }
  return false;
}

}  // namespace bvllm::layers
