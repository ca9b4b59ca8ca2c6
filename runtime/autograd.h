// Reverse-mode autograd.
//
// Every differentiable op that sees an input requiring grad (with grad mode on) records a Node:
// the backward function with the tensors it saved, and one Edge per input pointing at the node
// that produced that input (or at the input's AccumulateGrad node when it is a leaf). backward()
// counts dependencies, then runs nodes in reverse creation order as their gradients complete,
// summing the gradients that reach a node from several uses; a node's saved tensors are freed as
// soon as it has run. Leaves accumulate into .grad and then run their grad-ready hooks.
//
// Backward functions run with grad mode off: bvllm has no higher-order gradients.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm {

struct Edge {
  std::shared_ptr<Node> node;  // null: that input needs no gradient
  uint32_t input_nr = 0;       // which of node's gradient inputs this edge feeds
};

class Node {
 public:
  virtual ~Node() = default;
  // grads[i] is the gradient of output i (defined; zeros if nothing reached it). Returns one
  // gradient per next edge (undefined where that input needs none).
  virtual std::vector<Tensor> apply(std::vector<Tensor>& grads) = 0;
  virtual std::string name() const = 0;
  virtual void release_saved() {}

  std::vector<Edge> next_edges;
  uint64_t sequence_nr = 0;  // creation order: later nodes run first
  struct OutputMeta {
    Shape shape;
    DType dtype;
    Device device;
  };
  std::vector<OutputMeta> outputs;
};

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  uint32_t output_nr = 0;
  std::weak_ptr<Node> grad_accumulator;  // leaves: created on first use, owned by the graph
  std::vector<GradReadyHook> grad_ready_hooks;
};

// --- grad mode -------------------------------------------------------------------------------
bool grad_mode_enabled();
void set_grad_mode(bool enabled);

class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_mode_enabled()) { set_grad_mode(false); }
  ~NoGradGuard() { set_grad_mode(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

class EnableGradGuard {
 public:
  EnableGradGuard() : previous_(grad_mode_enabled()) { set_grad_mode(true); }
  ~EnableGradGuard() { set_grad_mode(previous_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// --- recording ops ---------------------------------------------------------------------------
// What a backward function sees: the gradient of each output and which inputs want one.
class GradContext {
 public:
  GradContext(std::vector<Tensor>& grads, std::vector<bool> needs) : grads_(grads), needs_(std::move(needs)) {}
  const Tensor& grad(size_t output = 0) const { return grads_.at(output); }
  bool needs(size_t input) const { return needs_.at(input); }

 private:
  std::vector<Tensor>& grads_;
  std::vector<bool> needs_;
};

// Returns one gradient per input, undefined where !ctx.needs(i). Saved tensors live in the
// closure; save outputs with .detach() so the graph holds no cycle through them.
using BackwardFn = std::function<std::vector<Tensor>(const GradContext& ctx)>;

// True when grad mode is on and any of `inputs` requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Attaches `outputs` to a new node named `name` whose inputs are `inputs`. A no-op when no input
// requires grad or grad mode is off, so ops call it unconditionally after computing outputs.
void record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs, BackwardFn backward);
inline void record(const char* name, const std::vector<Tensor>& inputs, Tensor& output, BackwardFn backward) {
  record(name, inputs, std::vector<Tensor*>{&output}, std::move(backward));
}

// The edge a gradient for `t` flows into.
Edge gradient_edge(const Tensor& t);

// Backpropagates grads[i] from roots[i] through the graph into the leaves' .grad.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads);

// --- activation checkpointing -----------------------------------------------------------------
// Runs fn(inputs) without keeping its activations; backward re-runs it (with the default RNG
// generator's state as it was, so dropout and noise repeat exactly) and backpropagates through
// the recomputed graph. Tensors that fn uses but does not receive (parameters) still get grads.
std::vector<Tensor> checkpoint(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
                               const std::vector<Tensor>& inputs);

}  // namespace bvllm
