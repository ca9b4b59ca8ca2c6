// CPU cases. tests/reference/bench_torch.py does the same work in PyTorch.
#include <algorithm>

#include "layers/bvllm.h"
#include "layers/generate.h"
#include "layers/qwen2.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "runtime/optim/adamw.h"
#include "tools/bench/bench.h"

namespace bvllm::bench {

namespace {

Result matmul_cpu(const Options& options) {
  constexpr int64_t n = 1024;
  Generator gen{1, 0, 0};
  Tensor a = ops::normal({n, n}, gen), b = ops::normal({n, n}, gen);
  NoGradGuard no_grad;
  Result r{"matmul_cpu", time_ms(options, [&] { ops::matmul(a, b); }), {}};
  r.extra["gflops"] = 2.0 * n * n * n / (median(r.ms) * 1e6);
  return r;
}

// One training step of a Qwen2-shaped decoder layer: forward, backward of sum(y * g), AdamW.
Result block_train_cpu(const Options& options) {
  const layers::Qwen2Config config{.vocab_size = 151936,
                                   .hidden_size = 512,
                                   .intermediate_size = 1408,
                                   .num_hidden_layers = 1,
                                   .num_attention_heads = 8,
                                   .num_key_value_heads = 2,
                                   .head_dim = 64,
                                   .rope_theta = 1e6};
  constexpr int64_t batch = 4, seq = 256;
  Generator gen{2, 0, 0};
  layers::Qwen2DecoderLayer layer(config);
  layer.reset_parameters(gen, config.initializer_range);
  optim::AdamW opt(layer.parameters(), {.lr = 1e-4});
  Tensor x = ops::normal({batch, seq, config.hidden_size}, gen);
  Tensor g = ops::normal({batch, seq, config.hidden_size}, gen);
  auto [cos, sin] =
      ops::rotary_tables(ops::arange(0, seq), config.head_dim, config.rope_theta, ops::RotaryStyle::HalfSplit);
  Result r{"block_train_cpu",
           time_ms(options,
                   [&] {
                     opt.zero_grad();
                     Tensor y = layer.forward(x, cos, sin);
                     ops::sum(ops::mul(y, g)).backward();
                     opt.step();
                   }),
           {}};
  r.extra["tokens"] = batch * seq;
  return r;
}

// Greedy decoding with a KV cache: a random Qwen2-0.5B-shaped model (f32, tied embeddings), a
// 32-token prompt, 64 new tokens (prefill, then 63 one-token steps). One iteration is one whole
// generate(); tokens_per_s counts the new tokens over all of it.
Result qwen2_decode_cpu(const Options& options) {
  const layers::Qwen2Config config{.vocab_size = 151936,
                                   .hidden_size = 896,
                                   .intermediate_size = 4864,
                                   .num_hidden_layers = 24,
                                   .num_attention_heads = 14,
                                   .num_key_value_heads = 2,
                                   .head_dim = 64,
                                   .rope_theta = 1e6,
                                   .tie_word_embeddings = true};
  constexpr int64_t prompt_len = 32, new_tokens = 64;
  Generator gen{5, 0, 0};
  layers::Qwen2ForCausalLM model(config);
  model.init_weights(gen);
  model.eval();
  std::vector<int64_t> prompt =
      ops::uniform({prompt_len}, gen, 0, static_cast<double>(config.vocab_size)).to(DType::I64).to_vector<int64_t>();
  std::vector<double> prefill_ms, step_ms;
  Result r{"qwen2_decode_cpu",
           time_ms(options,
                   [&] {
                     layers::GenerationResult g = layers::generate(model, prompt, {.max_new_tokens = new_tokens});
                     BVLLM_REQUIRE(static_cast<int64_t>(g.tokens.size()) == new_tokens, "qwen2_decode_cpu: got ",
                                   g.tokens.size(), " tokens");
                     prefill_ms.push_back(g.prefill_seconds * 1e3);
                     step_ms.push_back(g.decode_seconds * 1e3 / (new_tokens - 1));
                   }),
           {}};
  r.extra["prompt_tokens"] = prompt_len;
  r.extra["new_tokens"] = new_tokens;
  r.extra["tokens_per_s"] = new_tokens / (median(r.ms) / 1e3);
  // The lists also hold the warm-up iterations; the medians skip them.
  r.extra["prefill_ms"] = median({prefill_ms.begin() + options.warmup, prefill_ms.end()});
  r.extra["decode_step_ms"] = median({step_ms.begin() + options.warmup, step_ms.end()});
  return r;
}

// The B-VLLM visual path for one 16-frame video, noise-free selection, no temporal merge (so
// every run processes all 16 selected frames whatever the random weights): a small EVA (224 px,
// 16 x 16 patches, width 384, 6 blocks) on every frame, the temporal Q-Former over the frames'
// [CLS] tokens, the selection, the spatial Q-Former per frame (6 layers, hidden 256, 32 queries,
// a 24-token question) and the projector. frames_per_s counts input frames.
Result vision_cpu(const Options& options) {
  layers::BvllmConfig c;
  c.vision = {.image_size = 224, .patch_size = 14, .width = 384, .depth = 6, .heads = 6};
  c.vision.mlp_hidden = layers::EvaVitConfig::mlp_hidden_for(384);
  c.qformer.vocab_size = 30523;
  c.qformer.hidden_size = 256;
  c.qformer.num_hidden_layers = 6;
  c.qformer.num_attention_heads = 4;
  c.qformer.intermediate_size = 1024;
  c.qformer.encoder_width = 384;
  c.llm = {.vocab_size = 1024,
           .hidden_size = 512,
           .intermediate_size = 1024,
           .num_hidden_layers = 1,
           .num_attention_heads = 8,
           .num_key_value_heads = 8,
           .head_dim = 64};
  c.temporal_queries = 16;
  c.merge_threshold = 1.0;  // (cos + 1) / 2 never exceeds 1: no merge
  constexpr int64_t frames = 16, question = 24;
  Generator gen{9, 0, 0};
  layers::BvllmForCausalLM model(c);
  model.init_weights(gen);
  model.eval();
  layers::BvllmSample sample;
  sample.pixels = ops::normal({frames, 3, 224, 224}, gen);
  sample.bert_ids = ops::uniform({question}, gen, 1000, 30000).to(DType::I64);
  NoGradGuard no_grad;
  Result r{"vision_cpu",
           time_ms(options,
                   [&] {
                     layers::VisualSelection selection;
                     model.bvllm().visual_tokens(sample, {.noise_free = true}, &selection);
                     BVLLM_REQUIRE(selection.kept.size() == frames, "vision_cpu: frames merged");
                   }),
           {}};
  r.extra["frames"] = frames;
  r.extra["frames_per_s"] = frames / (median(r.ms) / 1e3);
  return r;
}

}  // namespace

const std::vector<Case>& cpu_cases() {
  static const std::vector<Case> all = {
      {"matmul_cpu", "f32 GEMM 1024x1024x1024 through OpenBLAS", matmul_cpu},
      {"block_train_cpu",
       "forward+backward+AdamW of a Qwen2 decoder layer (hidden 512, 8/2 heads, FFN 1408, seq 256, batch 4, f32)",
       block_train_cpu},
      {"qwen2_decode_cpu",
       "greedy decoding with a KV cache, Qwen2-0.5B-shaped random model (f32, tied), 32-token prompt, 64 new tokens",
       qwen2_decode_cpu},
      {"vision_cpu",
       "B-VLLM visual path for a 16-frame video: small EVA (224 px, width 384, 6 blocks) + both Q-Formers (6 "
       "layers, hidden 256) + projector, f32, no grad",
       vision_cpu},
  };
  return all;
}

}  // namespace bvllm::bench
