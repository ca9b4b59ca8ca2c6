#include "runtime/autograd.h"

#include <glog/logging.h>

#include <atomic>
#include <queue>
#include <unordered_map>

#include "runtime/ops.h"

namespace bvllm {

namespace {

thread_local bool g_grad_mode = true;
std::atomic<uint64_t> g_next_sequence_nr{0};

class FunctionNode final : public Node {
 public:
  FunctionNode(const char* name, BackwardFn fn, std::vector<bool> needs)
      : name_(name), fn_(std::move(fn)), needs_(std::move(needs)) {}

  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    BVLLM_REQUIRE(fn_, "backward through ", name_,
                  " a second time: its saved tensors were freed by the first backward");
    GradContext ctx(grads, needs_);
    std::vector<Tensor> out = fn_(ctx);
    CHECK_EQ(out.size(), next_edges.size()) << name_ << ": backward returned the wrong number of grads";
    return out;
  }
  std::string name() const override { return name_; }
  void release_saved() override { fn_ = nullptr; }

 private:
  const char* name_;
  BackwardFn fn_;
  std::vector<bool> needs_;
};

// The sink of a leaf's gradient: adds into .grad, then runs the leaf's grad-ready hooks.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}

  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    Tensor leaf(leaf_);
    Tensor g = grads[0].to(leaf.dtype());
    // Always a fresh buffer: the incoming gradient may be shared with another leaf.
    leaf.set_grad(leaf.grad().defined() ? ops::add(leaf.grad(), g) : g.clone());
    for (auto& hook : leaf_->autograd->grad_ready_hooks) hook(leaf);
    return {};
  }
  std::string name() const override { return "AccumulateGrad"; }

 private:
  std::shared_ptr<TensorImpl> leaf_;  // the graph keeps the leaf alive; the leaf holds us weakly
};

std::shared_ptr<Node> grad_accumulator(const Tensor& leaf) {
  AutogradMeta& m = *leaf.impl()->autograd;
  if (auto existing = m.grad_accumulator.lock()) return existing;
  auto node = std::make_shared<AccumulateGrad>(leaf.impl_ptr());
  node->sequence_nr = UINT64_MAX;  // a sink: runs as soon as its gradient is complete
  node->outputs.push_back({leaf.shape(), leaf.dtype(), leaf.device()});
  m.grad_accumulator = node;
  return node;
}

}  // namespace

bool grad_mode_enabled() { return g_grad_mode; }
void set_grad_mode(bool enabled) { g_grad_mode = enabled; }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  if (t.grad_fn()) return {t.grad_fn(), t.output_nr()};
  return {grad_accumulator(t), 0};
}

void record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs, BackwardFn backward) {
  if (!any_requires_grad(inputs)) return;
  std::vector<bool> needs;
  needs.reserve(inputs.size());
  for (const Tensor& t : inputs) needs.push_back(t.defined() && t.requires_grad());
  auto node = std::make_shared<FunctionNode>(name, std::move(backward), std::move(needs));
  node->sequence_nr = g_next_sequence_nr++;
  for (const Tensor& t : inputs) node->next_edges.push_back(gradient_edge(t));
  for (uint32_t i = 0; i < outputs.size(); ++i) {
    Tensor& out = *outputs[i];
    node->outputs.push_back({out.shape(), out.dtype(), out.device()});
    if (!is_floating(out.dtype())) continue;  // indices etc. carry no gradient
    if (!out.impl()->autograd) out.impl()->autograd = std::make_unique<AutogradMeta>();
    out.impl()->autograd->grad_fn = node;
    out.impl()->autograd->output_nr = i;
  }
}

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads) {
  CHECK_EQ(roots.size(), grads.size());
  NoGradGuard no_grad;

  // Count, for every node reachable from the roots, how many edges feed it.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack;
  auto visit = [&](Node* n) {
    if (dependencies.emplace(n, 0).second) stack.push_back(n);
  };
  std::vector<Edge> root_edges;
  for (const Tensor& r : roots) {
    Edge e = gradient_edge(r);
    BVLLM_REQUIRE(e.node, "backward: a root tensor does not require grad");
    root_edges.push_back(e);
    visit(e.node.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (!e.node) continue;
      visit(e.node.get());
      ++dependencies[e.node.get()];
    }
  }

  // Gradient buffers per node input, summed as contributions arrive.
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto accumulate = [&](const Edge& e, Tensor g) {
    auto& buf = buffers[e.node.get()];
    if (buf.empty()) buf.resize(e.node->outputs.size());
    Tensor& slot = buf[e.input_nr];
    slot = slot.defined() ? ops::add(slot, g) : std::move(g);
  };
  auto later_first = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr < b->sequence_nr;
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(later_first)> ready(
      later_first);
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& g = grads[i];
    BVLLM_REQUIRE(g.shape() == roots[i].shape(), "backward: gradient shape ", shape_str(g.shape()),
                  " does not match the root's ", shape_str(roots[i].shape()));
    accumulate(root_edges[i], g);
  }
  for (const Edge& e : root_edges)
    if (dependencies[e.node.get()] == 0) {
      dependencies[e.node.get()] = -1;  // queued
      ready.push(e.node);
    }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    std::vector<Tensor> inputs = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    inputs.resize(node->outputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].defined()) {
        const auto& m = node->outputs[i];
        inputs[i] = ops::zeros(m.shape, m.dtype, m.device);
      }
    }
    std::vector<Tensor> outputs = node->apply(inputs);
    node->release_saved();
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      if (outputs[i].defined()) accumulate(e, std::move(outputs[i]));
      if (--dependencies[e.node.get()] == 0) ready.push(e.node);
    }
  }
}

// --- activation checkpointing ------------------------------------------------------------------

std::vector<Tensor> checkpoint(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
                               const std::vector<Tensor>& inputs) {
  if (!grad_mode_enabled()) return fn(inputs);
  Generator rng_at_start = default_generator();
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  std::vector<Tensor*> output_ptrs;
  for (Tensor& t : outputs) output_ptrs.push_back(&t);
  // Every output gets an edge even if no input requires grad: parameters inside fn may.
  std::vector<Tensor> edge_inputs = inputs;
  bool inputs_need_grad = any_requires_grad(inputs);
  if (!inputs_need_grad) {
    // A constant that "requires grad" so the node is recorded; its gradient is dropped.
    Tensor anchor = ops::zeros({}, DType::F32);
    anchor.set_requires_grad(true);
    edge_inputs.push_back(anchor);
  }
  size_t n_edges = edge_inputs.size();
  record("checkpoint", edge_inputs, output_ptrs, [fn, inputs, n_edges, rng_at_start](const GradContext& ctx) {
    std::vector<Tensor> detached;
    for (const Tensor& t : inputs) {
      Tensor d = t.defined() ? t.detach() : t;
      if (t.defined() && t.requires_grad()) d.set_requires_grad(true);
      detached.push_back(d);
    }
    Generator rng_now = default_generator();
    default_generator() = rng_at_start;
    std::vector<Tensor> recomputed;
    {
      EnableGradGuard grad;
      recomputed = fn(detached);
    }
    default_generator() = rng_now;
    std::vector<Tensor> roots, grads;
    for (size_t i = 0; i < recomputed.size(); ++i) {
      if (!recomputed[i].requires_grad()) continue;
      roots.push_back(recomputed[i]);
      grads.push_back(ctx.grad(i));
    }
    if (!roots.empty()) run_backward(roots, grads);
    std::vector<Tensor> result(n_edges);  // the anchor, if any, gets no gradient
    for (size_t i = 0; i < detached.size(); ++i)
      if (ctx.needs(i)) result[i] = detached[i].grad();
    return result;
  });
  return outputs;
}

}  // namespace bvllm
