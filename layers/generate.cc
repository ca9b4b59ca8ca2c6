#include "layers/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int64_t next_token(const Tensor& logits, const GenerationOptions& o, Generator& gen) {
  BVLLM_REQUIRE(logits.dim() == 1 && logits.size(0) > 0, "next_token: logits must be [vocab], got ",
                shape_str(logits.shape()));
  std::vector<float> x = logits.to(DType::F32).to(Device::cpu()).to_vector<float>();
  if (o.greedy) return std::max_element(x.begin(), x.end()) - x.begin();  // the first maximum

  BVLLM_REQUIRE(o.temperature > 0, "generate: temperature must be positive, got ", o.temperature);
  BVLLM_REQUIRE(o.top_p > 0 && o.top_p <= 1, "generate: top_p must be in (0, 1], got ", o.top_p);
  BVLLM_REQUIRE(o.top_k >= 0, "generate: top_k must be >= 0, got ", o.top_k);
  const int64_t vocab = static_cast<int64_t>(x.size());
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  // Candidates by descending logit (lower id first among equals).
  auto by_logit = [&](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  int64_t kept = vocab;
  if (o.top_k > 0 && o.top_k < vocab) {
    // TopKLogitsWarper: remove scores < the k-th largest, so ties with it stay.
    std::nth_element(order.begin(), order.begin() + (o.top_k - 1), order.end(), by_logit);
    const float kth = x[order[o.top_k - 1]];
    kept = std::partition(order.begin(), order.end(), [&](int64_t i) { return x[i] >= kth; }) - order.begin();
  }
  std::sort(order.begin(), order.begin() + kept, by_logit);
  // Softmax of logits / temperature over the candidates, in f64.
  const double top = x[order[0]] / o.temperature;
  std::vector<double> p(kept);
  double total = 0;
  for (int64_t i = 0; i < kept; ++i) total += p[i] = std::exp(x[order[i]] / o.temperature - top);
  for (double& v : p) v /= total;
  if (o.top_p < 1) {
    // TopPLogitsWarper: drop a token when the mass of the tokens above it already reaches top_p
    // (ascending cumsum <= 1 - top_p), always keeping the most likely one.
    double above = 0;
    int64_t n = 0;
    while (n < kept && (n == 0 || above < o.top_p)) above += p[n++];
    kept = n;
  }
  // One uniform in (0, 1] against the cumulative mass of what is left.
  double mass = std::accumulate(p.begin(), p.begin() + kept, 0.0);
  const double u = uniform_from_u32(gen.u32(gen.reserve(1), 0)) * mass;
  double cumulative = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cumulative += p[i];
    if (u <= cumulative) return order[i];
  }
  return order[kept - 1];  // rounding left u a hair above the sum
}

namespace {

// The decode loop after a prefill: `prefill` runs the prompt through the model with the cache and
// returns the last position's logits [vocab].
GenerationResult decode(const Qwen2ForCausalLM& model, KVCache& cache, const std::function<Tensor()>& prefill,
                        const GenerationOptions& options, const std::function<void(int64_t)>& on_token) {
  BVLLM_REQUIRE(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  NoGradGuard no_grad;
  const Device device = model.lm_head_weight().device();
  Generator gen{options.seed, 0, 0};
  GenerationResult result;

  auto step = [&](int64_t token) {
    Tensor input = Tensor::from<int64_t>({token}, {1, 1}).to(device);
    return model.forward(input, {.cache = &cache, .logits_to_keep = 1}).reshape({-1});
  };
  auto start = std::chrono::steady_clock::now();
  Tensor logits = prefill();
  result.prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  while (static_cast<int64_t>(result.tokens.size()) < options.max_new_tokens) {
    const int64_t token = next_token(logits, options, gen);
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    const auto& eos = options.eos_token_ids;
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
      result.stopped_at_eos = true;
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) == options.max_new_tokens) break;
    logits = step(token);
  }
  result.decode_seconds = seconds_since(start);
  return result;
}

}  // namespace

GenerationResult generate(const Qwen2ForCausalLM& model, KVCache& cache, const std::vector<int64_t>& prompt,
                          const GenerationOptions& options, const std::function<void(int64_t)>& on_token) {
  BVLLM_REQUIRE(!prompt.empty(), "generate: the prompt is empty");
  const Device device = model.lm_head_weight().device();
  auto prefill = [&] {
    Tensor input = Tensor::from<int64_t>(prompt, {1, static_cast<int64_t>(prompt.size())}).to(device);
    return model.forward(input, {.cache = &cache, .logits_to_keep = 1}).reshape({-1});
  };
  return decode(model, cache, prefill, options, on_token);
}

GenerationResult generate_from_embeds(const Qwen2ForCausalLM& model, KVCache& cache, const Tensor& prompt_embeds,
                                      const GenerationOptions& options, const std::function<void(int64_t)>& on_token) {
  const int64_t hidden = model.config().hidden_size;
  BVLLM_REQUIRE(prompt_embeds.defined() && prompt_embeds.dim() == 2 && prompt_embeds.size(0) > 0 &&
                    prompt_embeds.size(1) == hidden,
                "generate_from_embeds: the prompt embeddings must be [L > 0, ", hidden, "], got ",
                prompt_embeds.defined() ? shape_str(prompt_embeds.shape()) : std::string("undefined"));
  const Device device = model.lm_head_weight().device();
  const DType dtype = model.lm_head_weight().dtype();
  auto prefill = [&] {
    Tensor input = prompt_embeds.detach().to(dtype).to(device).reshape({1, prompt_embeds.size(0), hidden});
    return model.forward_embeds(input, {.cache = &cache, .logits_to_keep = 1}).reshape({-1});
  };
  return decode(model, cache, prefill, options, on_token);
}

GenerationResult generate(const Qwen2ForCausalLM& model, const std::vector<int64_t>& prompt,
                          const GenerationOptions& options, const std::function<void(int64_t)>& on_token) {
  KVCache cache(model.config());
  return generate(model, cache, prompt, options, on_token);
}

}  // namespace bvllm::layers
