#include "layers/module.h"

#include <fnmatch.h>
#include <glog/logging.h>

#include <algorithm>
#include <set>

#include "runtime/autograd.h"

namespace bvllm::layers {

// --- parameter device ----------------------------------------------------------------------

namespace {
thread_local Device parameter_device = Device::cpu();
}  // namespace

ParameterDeviceScope::ParameterDeviceScope(Device device) : previous_(parameter_device) { parameter_device = device; }
ParameterDeviceScope::~ParameterDeviceScope() { parameter_device = previous_; }

Tensor empty_parameter(const Shape& shape, DType dtype) { return Tensor::empty(shape, dtype, parameter_device); }

// --- NamePattern -----------------------------------------------------------------------------

NamePattern NamePattern::glob(std::string pattern) {
  NamePattern p;
  p.text_ = std::move(pattern);
  return p;
}

NamePattern NamePattern::regex(std::string pattern) {
  NamePattern p;
  p.is_regex_ = true;
  try {
    p.regex_ = std::make_shared<const std::regex>(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error(str_cat("name pattern: '", pattern, "' is not a valid regular expression: ", e.what()));
  }
  p.text_ = std::move(pattern);
  return p;
}

bool NamePattern::matches(const std::string& name) const {
  if (is_regex_) return std::regex_match(name, *regex_);
  return fnmatch(text_.c_str(), name.c_str(), 0) == 0;
}

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// --- the tree --------------------------------------------------------------------------------

void Module::register_parameter(std::string name, Tensor* slot, bool requires_grad) {
  CHECK(slot != nullptr && slot->defined()) << "parameter " << name << " is undefined";
  CHECK(name.find('.') == std::string::npos) << "parameter name " << name << " contains a dot";
  for (const auto& p : params_) CHECK(p.first != name) << "parameter " << name << " registered twice";
  *slot = slot->detach();
  slot->set_requires_grad(requires_grad);
  params_.emplace_back(std::move(name), slot);
}

void Module::add_child(std::string name, std::shared_ptr<Module> module) {
  CHECK(module != nullptr) << "module " << name << " is null";
  CHECK(name.find('.') == std::string::npos) << "module name " << name << " contains a dot";
  for (const auto& c : children_) CHECK(c.first != name) << "module " << name << " registered twice";
  module->train(training_);
  children_.emplace_back(std::move(name), std::move(module));
}

void Module::unregister_module(const std::string& name) {
  std::erase_if(children_, [&](const auto& c) { return c.first == name; });
}

template <typename F>
void Module::visit_parameters(const std::string& prefix, F&& f) const {
  for (const auto& [name, slot] : params_) f(join_name(prefix, name), slot);
  for (const auto& [name, child] : children_) child->visit_parameters(join_name(prefix, name), f);
}

NamedTensors Module::named_parameters(const std::string& prefix) const {
  NamedTensors out;
  visit_parameters(prefix, [&](const std::string& name, Tensor* slot) { out.emplace_back(name, *slot); });
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  visit_parameters("", [&](const std::string&, Tensor* slot) { out.push_back(*slot); });
  return out;
}

NamedTensors Module::named_trainable_parameters(const std::string& prefix) const {
  NamedTensors out;
  visit_parameters(prefix, [&](const std::string& name, Tensor* slot) {
    if (slot->requires_grad()) out.emplace_back(name, *slot);
  });
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& prefix) {
  std::vector<std::pair<std::string, Module*>> out{{prefix, this}};
  for (const auto& [name, child] : children_) {
    auto sub = child->named_modules(join_name(prefix, name));
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

Module* Module::find_module(const std::string& path) {
  if (path.empty()) return this;
  const size_t dot = path.find('.');
  const std::string head = path.substr(0, dot);
  for (const auto& [name, child] : children_) {
    if (name == head) return dot == std::string::npos ? child.get() : child->find_module(path.substr(dot + 1));
  }
  return nullptr;
}

Tensor* Module::find_parameter(const std::string& name) {
  const size_t dot = name.rfind('.');
  Module* owner = dot == std::string::npos ? this : find_module(name.substr(0, dot));
  if (owner == nullptr) return nullptr;
  const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
  for (const auto& [n, slot] : owner->params_) {
    if (n == leaf) return slot;
  }
  return nullptr;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  visit_parameters("", [&](const std::string&, Tensor* slot) { n += slot->numel(); });
  return n;
}

// --- modes and the trainable set ---------------------------------------------------------------

void Module::train(bool training) {
  training_ = training;
  for (const auto& [name, child] : children_) child->train(training);
}

int64_t Module::set_requires_grad(const NamePattern& pattern, bool requires_grad) {
  int64_t matched = 0;
  visit_parameters("", [&](const std::string& name, Tensor* slot) {
    if (!pattern.matches(name)) return;
    slot->set_requires_grad(requires_grad);
    ++matched;
  });
  return matched;
}

void Module::set_requires_grad(bool requires_grad) {
  visit_parameters("", [&](const std::string&, Tensor* slot) { slot->set_requires_grad(requires_grad); });
}

// --- dtype and device --------------------------------------------------------------------------

namespace {

// A fresh leaf holding `value`, with the requires_grad of the parameter it replaces.
Tensor as_parameter(const Tensor& value, bool requires_grad) {
  Tensor t = value.detach();
  t.set_requires_grad(requires_grad);
  return t;
}

}  // namespace

Module& Module::to(DType dtype) {
  NoGradGuard no_grad;
  visit_parameters("", [&](const std::string&, Tensor* slot) {
    if (!is_floating(slot->dtype()) || slot->dtype() == dtype) return;
    *slot = as_parameter(slot->to(dtype), slot->requires_grad());
  });
  return *this;
}

Module& Module::to(Device device) {
  NoGradGuard no_grad;
  visit_parameters("", [&](const std::string&, Tensor* slot) {
    if (slot->device() == device) return;
    *slot = as_parameter(slot->to(device), slot->requires_grad());
  });
  return *this;
}

// --- state -------------------------------------------------------------------------------------

void Module::load_state_dict(const std::map<std::string, Tensor>& tensors, const StateLoadOptions& options) {
  auto origin = [&](const std::string& name) { return options.origin ? options.origin(name) : options.source; };
  std::vector<std::string> problems;
  std::vector<std::pair<Tensor*, Tensor>> updates;
  std::set<std::string> known;
  visit_parameters("", [&](const std::string& name, Tensor* slot) {
    known.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      if (!options.allow_missing) problems.push_back(str_cat("missing tensor '", name, "'"));
      return;
    }
    const Tensor& src = it->second;
    if (!src.defined() || src.shape() != slot->shape()) {
      problems.push_back(str_cat("tensor '", name, "' in ", origin(name), " has shape ",
                                 src.defined() ? shape_str(src.shape()) : "(undefined)", ", the model expects ",
                                 shape_str(slot->shape())));
      return;
    }
    if (!is_floating(src.dtype()) && is_floating(slot->dtype())) {
      problems.push_back(str_cat("tensor '", name, "' in ", origin(name), " has dtype ", dtype_name(src.dtype()),
                                 ", the model expects a floating dtype"));
      return;
    }
    updates.emplace_back(slot, src);
  });
  if (!options.allow_unexpected) {
    for (const auto& [name, t] : tensors) {
      if (!known.count(name)) problems.push_back(str_cat("unexpected tensor '", name, "' in ", origin(name)));
    }
  }
  if (!problems.empty()) {
    constexpr size_t kShown = 8;
    std::string message = str_cat(options.source, " does not match the model (", problems.size(), " problem",
                                  problems.size() == 1 ? "" : "s", "): ");
    for (size_t i = 0; i < std::min(problems.size(), kShown); ++i) message += (i ? "; " : "") + problems[i];
    if (problems.size() > kShown) message += str_cat("; and ", problems.size() - kShown, " more");
    throw Error(message);
  }
  NoGradGuard no_grad;
  for (auto& [slot, src] : updates) {
    Tensor value = src.detach().to(slot->dtype()).to(slot->device()).contiguous();
    if (options.copy && value.shares_storage(src)) value = value.clone();
    *slot = as_parameter(value, slot->requires_grad());
  }
}

// --- initialization ----------------------------------------------------------------------------

void Module::reset_parameters(Generator& gen, double std) {
  for (const auto& [name, child] : children_) child->reset_parameters(gen, std);
}

}  // namespace bvllm::layers
