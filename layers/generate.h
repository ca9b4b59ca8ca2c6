// Text generation with a KV cache: the prompt runs once (prefill), then one token at a time, each
// step attending to the cache. Greedy (argmax) or sampling with transformers' warpers in
// transformers' order: temperature, top-k, top-p. Batch size one; runs under NoGradGuard.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "layers/qwen2.h"

namespace bvllm::layers {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  bool greedy = true;                       // false: sample
  double temperature = 1.0;                 // sampling: logits / temperature
  int64_t top_k = 0;                        // sampling: keep the k largest logits (ties with the k-th kept); 0 = all
  double top_p = 1.0;                       // sampling: keep the smallest set of most likely tokens with mass >= top_p
  uint64_t seed = 0;                        // sampling: Philox seed; the same seed gives the same tokens
  std::vector<int64_t> eos_token_ids = {};  // stop after producing one of these
};

struct GenerationResult {
  std::vector<int64_t> tokens;  // the new tokens; the last is the eos id when one stopped it
  bool stopped_at_eos = false;
  double prefill_seconds = 0;  // the prompt's forward pass (to the first token's logits)
  double decode_seconds = 0;   // the one-token steps after it
};

// Appends `prompt` (ids not yet in `cache`) to the cache and generates after it; the cache then
// holds prompt and generated tokens but the last (whose keys no step has computed yet), so a
// multi-turn caller continues with that token plus the next turn's ids. on_token (optional) sees
// each token as it is chosen.
GenerationResult generate(const Qwen2ForCausalLM& model, KVCache& cache, const std::vector<int64_t>& prompt,
                          const GenerationOptions& options, const std::function<void(int64_t)>& on_token = {});
// The same with a fresh cache.
GenerationResult generate(const Qwen2ForCausalLM& model, const std::vector<int64_t>& prompt,
                          const GenerationOptions& options, const std::function<void(int64_t)>& on_token = {});

// The same from input embeddings [L, hidden] instead of ids: a B-VLLM prompt with its visual tokens
// spliced in (BvllmForCausalLM::input_embeds). The cache then continues with ids as above, so a
// chat computes a video's visual tokens once and every later turn only appends its text.
GenerationResult generate_from_embeds(const Qwen2ForCausalLM& model, KVCache& cache, const Tensor& prompt_embeds,
                                      const GenerationOptions& options,
                                      const std::function<void(int64_t)>& on_token = {});

// The next token from one row of logits [vocab]: argmax (the lowest id among equal maxima) when
// greedy, else a draw from the warped distribution with one uniform from `gen`.
int64_t next_token(const Tensor& logits, const GenerationOptions& options, Generator& gen);

}  // namespace bvllm::layers
