// Module: a tree of named parameters and child modules, as torch.nn.Module.
//
// A parameter's full name is the path of module names down to it, joined with dots, so the tree
// spells the Hugging Face state-dict names (model.layers.3.self_attn.q_proj.weight) and import and
// export are name-for-name. Leaf modules keep their parameters in Tensor members and register
// them by address; to(dtype) and load_state_dict replace the tensor in that member, so a module
// never holds a stale copy. Parameters are leaves with requires_grad on until frozen.
//
// Modules are neither copied nor moved (the tree holds their addresses): make them with
// std::make_shared and register children with register_module.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/io/safetensors.h"  // defines: NamedTensors
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace bvllm::layers {

// Selects parameters or modules by full name. A glob is fnmatch(3) without FNM_PATHNAME: `*` is
// any run of characters, dots included ("*.lora_*", "model.layers.1?.*"), `?` one character,
// `[...]` a class. A regex is ECMAScript. Both must match the whole name (as peft's re.fullmatch).
class NamePattern {
 public:
  static NamePattern glob(std::string pattern);
  static NamePattern regex(std::string pattern);  // throws bvllm::Error for an invalid expression
  bool matches(const std::string& name) const;
  const std::string& text() const { return text_; }

 private:
  NamePattern() = default;
  std::string text_;
  bool is_regex_ = false;
  std::shared_ptr<const std::regex> regex_;
};

// How Module::load_state_dict treats a source that differs from the model.
struct StateLoadOptions {
  bool allow_missing = false;         // parameters absent from `tensors` keep their values
  bool allow_unexpected = false;      // tensors that name no parameter are ignored
  std::string source = "state dict";  // what `tensors` came from, for errors
  // Where one tensor came from (its file), for errors; `source` when not set.
  std::function<std::string(const std::string& name)> origin = {};
  // Copy the values (the default). false lets a parameter share the source's storage when no
  // conversion is needed: right for tensors nobody else reads, such as a checkpoint's
  // copy-on-write mapping, wrong for tensors the caller keeps (training would write into them).
  bool copy = true;
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // --- the tree ------------------------------------------------------------------------------
  // Every parameter with its full name (prefix + path), depth first: a module's own parameters in
  // registration order, then each child's in registration order. The tensors are the parameters
  // themselves (handles), not copies.
  NamedTensors named_parameters(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  // Only those with requires_grad (what an optimizer gets).
  NamedTensors named_trainable_parameters(const std::string& prefix = "") const;
  // This module (named `prefix`) and every descendant, depth first.
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& prefix = "");
  // The descendant at a dotted path ("model.layers.0.mlp"), or null.
  Module* find_module(const std::string& path);
  // The parameter slot at a full name, or null; writing through it replaces the parameter.
  Tensor* find_parameter(const std::string& name);
  int64_t num_parameters() const;  // elements

  // --- train / eval --------------------------------------------------------------------------
  // Sets the mode of this module and every descendant (dropout is active only in training).
  void train(bool training = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // --- the trainable set ---------------------------------------------------------------------
  // Sets requires_grad of every parameter whose full name matches; returns how many matched, so
  // that a caller can reject a pattern that matches nothing (usually a typo).
  int64_t set_requires_grad(const NamePattern& pattern, bool requires_grad);
  int64_t freeze(const NamePattern& pattern) { return set_requires_grad(pattern, false); }
  int64_t unfreeze(const NamePattern& pattern) { return set_requires_grad(pattern, true); }
  void set_requires_grad(bool requires_grad);  // every parameter

  // --- dtype and device ----------------------------------------------------------------------
  // Converts every floating parameter (a new tensor in its slot, requires_grad kept, gradient
  // dropped). Integer parameters keep their dtype.
  Module& to(DType dtype);
  Module& to(Device device);

  // --- state ---------------------------------------------------------------------------------
  NamedTensors state_dict(const std::string& prefix = "") const { return named_parameters(prefix); }

  // Replaces each parameter by the tensor of the same full name, converted to the parameter's
  // dtype and device; requires_grad is kept, gradients are dropped. All problems are collected
  // first and reported in one bvllm::Error that names the source: missing names, unexpected
  // names, and mis-shaped tensors with both shapes and the file they came from. Nothing changes
  // when there is an error.
  void load_state_dict(const std::map<std::string, Tensor>& tensors, const StateLoadOptions& options = {});

  // --- initialization ------------------------------------------------------------------------
  // Draws fresh parameters as the module's reference implementation initializes them (Linear and
  // Embedding normal(0, std), biases zero, norms one: Qwen2PreTrainedModel._init_weights with
  // std = initializer_range). The base version recurses into the children.
  virtual void reset_parameters(Generator& gen, double std);

 protected:
  // `slot` must be a member of this module (it is read and replaced through this address).
  void register_parameter(std::string name, Tensor* slot, bool requires_grad = true);
  template <typename M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> module) {
    add_child(std::move(name), module);
    return module;
  }
  void unregister_module(const std::string& name);  // no-op when absent

 private:
  void add_child(std::string name, std::shared_ptr<Module> module);
  template <typename F>
  void visit_parameters(const std::string& prefix, F&& f) const;  // f(full name, Tensor* slot)

  bool training_ = true;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// The device that modules built on this thread allocate their parameters on: the CPU, unless a
// ParameterDeviceScope is alive. Building under `ParameterDeviceScope scope(Device::meta());`
// gives every parameter its shape and dtype but no bytes, so a paper-scale model can be built and
// described (parameter counts per module) on a machine that could not hold its weights.
class ParameterDeviceScope {
 public:
  explicit ParameterDeviceScope(Device device);
  ~ParameterDeviceScope();
  ParameterDeviceScope(const ParameterDeviceScope&) = delete;
  ParameterDeviceScope& operator=(const ParameterDeviceScope&) = delete;

 private:
  Device previous_;
};
// An uninitialized parameter tensor on the current parameter device.
Tensor empty_parameter(const Shape& shape, DType dtype);

// Children named "0", "1", ...: model.layers.N.
template <typename M>
class ModuleList : public Module {
 public:
  void push_back(std::shared_ptr<M> module) {
    items_.push_back(register_module(std::to_string(items_.size()), std::move(module)));
  }
  size_t size() const { return items_.size(); }
  M& operator[](size_t i) const { return *items_.at(i); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

// "a.b" from a prefix and a name ("b" when the prefix is empty).
std::string join_name(const std::string& prefix, const std::string& name);

}  // namespace bvllm::layers
