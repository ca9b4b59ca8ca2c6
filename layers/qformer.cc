#include "layers/qformer.h"

#include <cmath>
#include <map>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

// --- QFormerConfig -----------------------------------------------------------------------------

QFormerConfig QFormerConfig::bert_base() {
  QFormerConfig c;  // the defaults are bert-base-uncased with InstructBLIP's cross-attention
  c.validate("QFormerConfig::bert_base");
  return c;
}

void QFormerConfig::validate(const std::string& origin) const {
  auto positive = [&](const char* field, int64_t v) {
    BVLLM_REQUIRE(v > 0, origin, ": field '", field, "' must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("intermediate_size", intermediate_size);
  positive("max_position_embeddings", max_position_embeddings);
  positive("encoder_width", encoder_width);
  positive("cross_attention_freq", cross_attention_freq);
  BVLLM_REQUIRE(hidden_size % num_attention_heads == 0, origin, ": hidden_size ", hidden_size,
                " is not a multiple of num_attention_heads ", num_attention_heads);
  BVLLM_REQUIRE(layer_norm_eps > 0, origin, ": field 'layer_norm_eps' must be positive, got ", layer_norm_eps);
  auto probability = [&](const char* field, double p) {
    BVLLM_REQUIRE(p >= 0 && p < 1, origin, ": field '", field, "' must be in [0, 1), got ", p);
  };
  probability("hidden_dropout_prob", hidden_dropout_prob);
  probability("attention_probs_dropout_prob", attention_probs_dropout_prob);
  BVLLM_REQUIRE(initializer_range >= 0, origin, ": field 'initializer_range' must be >= 0, got ", initializer_range);
}

// --- modules -----------------------------------------------------------------------------------

QFormerEmbeddings::QFormerEmbeddings(const QFormerConfig& c, DType dtype) : dropout_(c.hidden_dropout_prob) {
  // Registration order = LAVIS's state-dict order (position_ids, a buffer, is not a parameter).
  word_embeddings = register_module("word_embeddings", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype));
  position_embeddings = register_module("position_embeddings",
                                        std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size, dtype));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, dtype));
}

Tensor QFormerEmbeddings::forward(const Tensor& queries, const Tensor& ids) const {
  Tensor x = queries;
  const int64_t l = ids.size(1);
  if (l > 0) {
    const int64_t max_positions = position_embeddings->num_embeddings();
    BVLLM_REQUIRE(l <= max_positions, "Q-Former: ", l, " text tokens, but max_position_embeddings is ", max_positions,
                  " (truncate the BERT text, as B-VLLM's tokenizer call does)");
    Tensor positions = ops::arange(0, static_cast<double>(l)).to(ids.device());
    Tensor text = ops::add(word_embeddings->forward(ids), position_embeddings->forward(positions));
    x = ops::concat({queries, text}, 1);
  }
  return ops::dropout(layer_norm->forward(x), dropout_, is_training(), default_generator());
}

QFormerSelfAttention::QFormerSelfAttention(const QFormerConfig& c, int64_t context_width, DType dtype)
    : heads_(c.num_attention_heads), dropout_(c.attention_probs_dropout_prob) {
  query = register_module("query", std::make_shared<Linear>(c.hidden_size, c.hidden_size, true, dtype));
  key = register_module("key", std::make_shared<Linear>(context_width, c.hidden_size, true, dtype));
  value = register_module("value", std::make_shared<Linear>(context_width, c.hidden_size, true, dtype));
}

Tensor QFormerSelfAttention::forward(const Tensor& hidden, const Tensor& context, const Tensor& key_mask) const {
  const int64_t b = hidden.size(0), lq = hidden.size(1), lk = context.size(1), h = query->out_features();
  const int64_t d = h / heads_;
  // [B, L, H] -> [B, heads, L, d]: head i is columns [i d, (i + 1) d) (transpose_for_scores).
  auto heads = [&](const Tensor& t, int64_t l) { return t.view({b, l, heads_, d}).transpose(1, 2); };
  Tensor q = heads(query->forward(hidden), lq);
  Tensor k = heads(key->forward(context), lk);
  Tensor v = heads(value->forward(context), lk);
  Tensor a;
  if (is_training() && dropout_ > 0) {
    // Dropout on the attention probabilities needs them materialized: LAVIS's explicit path,
    // scores / sqrt(d) + (1 - mask) * -10000, softmax, dropout, @ v.
    Tensor scores = ops::mul(ops::matmul(q, k.transpose(2, 3)), 1.0 / std::sqrt(static_cast<double>(d)));
    if (key_mask.defined()) {
      Tensor bias = ops::mul(ops::rsub(1.0, key_mask.to(scores.dtype())), -10000.0).view({b, 1, 1, lk});
      scores = ops::add(scores, bias);
    }
    Tensor probs = ops::dropout(ops::softmax(scores, -1), dropout_, true, default_generator());
    a = ops::matmul(probs, v);
  } else {
    // The masked keys get exactly zero weight here; LAVIS's additive -10000 gives exp(-10000)
    // = 0 in f32 as well (every row keeps its unmasked query keys).
    a = ops::scaled_dot_product_attention(q, k, v, {.key_padding_mask = key_mask});
  }
  return a.transpose(1, 2).reshape({b, lq, h});
}

QFormerOutput::QFormerOutput(int64_t in_features, const QFormerConfig& c, DType dtype)
    : dropout_(c.hidden_dropout_prob) {
  dense = register_module("dense", std::make_shared<Linear>(in_features, c.hidden_size, true, dtype));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, dtype));
}

Tensor QFormerOutput::forward(const Tensor& hidden, const Tensor& input) const {
  Tensor h = ops::dropout(dense->forward(hidden), dropout_, is_training(), default_generator());
  return layer_norm->forward(ops::add(h, input));
}

QFormerAttention::QFormerAttention(const QFormerConfig& c, int64_t context_width, DType dtype) {
  self = register_module("self", std::make_shared<QFormerSelfAttention>(c, context_width, dtype));
  output = register_module("output", std::make_shared<QFormerOutput>(c.hidden_size, c, dtype));
}

Tensor QFormerAttention::forward(const Tensor& hidden, const Tensor& context, const Tensor& key_mask) const {
  return output->forward(self->forward(hidden, context, key_mask), hidden);
}

QFormerIntermediate::QFormerIntermediate(const QFormerConfig& c, DType dtype) {
  dense = register_module("dense", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, true, dtype));
}

Tensor QFormerIntermediate::forward(const Tensor& x) const { return ops::gelu(dense->forward(x)); }

QFormerLayer::QFormerLayer(const QFormerConfig& c, int64_t index, DType dtype) {
  // Registration order = LAVIS BertLayer.__init__ (and so its state-dict order).
  attention = register_module("attention", std::make_shared<QFormerAttention>(c, c.hidden_size, dtype));
  if (c.has_cross_attention(index))
    crossattention = register_module("crossattention", std::make_shared<QFormerAttention>(c, c.encoder_width, dtype));
  intermediate = register_module("intermediate", std::make_shared<QFormerIntermediate>(c, dtype));
  output = register_module("output", std::make_shared<QFormerOutput>(c.intermediate_size, c, dtype));
  intermediate_query = register_module("intermediate_query", std::make_shared<QFormerIntermediate>(c, dtype));
  output_query = register_module("output_query", std::make_shared<QFormerOutput>(c.intermediate_size, c, dtype));
}

Tensor QFormerLayer::forward(const Tensor& x, int64_t num_queries, const Tensor& key_mask,
                             const Tensor& encoder) const {
  const int64_t total = x.size(1), l = total - num_queries;
  Tensor a = attention->forward(x, x, key_mask);
  Tensor q = a.narrow(1, 0, num_queries);
  if (crossattention) q = crossattention->forward(q, encoder, Tensor());
  q = output_query->forward(intermediate_query->forward(q), q);
  if (l == 0) return q;
  Tensor t = a.narrow(1, num_queries, l);
  t = output->forward(intermediate->forward(t), t);
  return ops::concat({q, t}, 1);
}

QFormerEncoder::QFormerEncoder(const QFormerConfig& c, DType dtype) {
  layer = register_module("layer", std::make_shared<ModuleList<QFormerLayer>>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(std::make_shared<QFormerLayer>(c, i, dtype));
}

QFormerBert::QFormerBert(const QFormerConfig& c, DType dtype) {
  embeddings = register_module("embeddings", std::make_shared<QFormerEmbeddings>(c, dtype));
  encoder = register_module("encoder", std::make_shared<QFormerEncoder>(c, dtype));
}

QFormer::QFormer(const QFormerConfig& c, DType dtype) : config_(c) {
  c.validate();
  bert = register_module("bert", std::make_shared<QFormerBert>(c, dtype));
}

Tensor QFormer::forward(const Tensor& query_embeds, const Tensor& ids, const Tensor& text_mask,
                        const Tensor& encoder_states) const {
  const QFormerConfig& c = config_;
  const int64_t h = c.hidden_size;
  BVLLM_REQUIRE(encoder_states.dim() == 3 && encoder_states.size(2) == c.encoder_width,
                "Q-Former: encoder states must be [B, Lk, ", c.encoder_width, "], got ",
                shape_str(encoder_states.shape()));
  const int64_t b = encoder_states.size(0);
  BVLLM_REQUIRE(query_embeds.dim() == 3 && query_embeds.size(2) == h && query_embeds.size(1) > 0 &&
                    (query_embeds.size(0) == 1 || query_embeds.size(0) == b),
                "Q-Former: query embeddings must be [1 or ", b, ", nq, ", h, "] with nq > 0, got ",
                shape_str(query_embeds.shape()));
  BVLLM_REQUIRE(ids.dim() == 2 && ids.size(0) == b, "Q-Former: ids must be [", b, ", L], got ", shape_str(ids.shape()));
  BVLLM_REQUIRE(text_mask.shape() == ids.shape(), "Q-Former: text_mask must have the shape of ids ",
                shape_str(ids.shape()), ", got ", shape_str(text_mask.shape()));
  const Tensor& w = bert->embeddings->word_embeddings->weight();
  auto as_model = [&](const Tensor& t) { return t.to(w.dtype()).to(w.device()); };
  const int64_t nq = query_embeds.size(1), l = ids.size(1);
  Tensor queries = as_model(query_embeds);
  if (queries.size(0) != b) queries = queries.expand({b, nq, h});
  Tensor encoder = as_model(encoder_states);

  Tensor x = bert->embeddings->forward(queries, ids.to(w.device()));
  // Keys: every query, and the text tokens its mask keeps ([1]*nq ++ text_mask).
  Tensor key_mask;
  if (l > 0) {
    Tensor text = text_mask.to(w.device()).to(DType::Bool);  // non-zero -> true
    key_mask = ops::concat({ops::ones({b, nq}, DType::Bool, w.device()), text}, 1);
  }
  const ModuleList<QFormerLayer>& layers = *bert->encoder->layer;
  for (const auto& layer : layers) x = layer->forward(x, nq, key_mask, encoder);
  return x.narrow(1, 0, nq);
}

// --- loading -----------------------------------------------------------------------------------

void load_qformer(QFormer& model, const NamedTensors& tensors, const std::string& prefix, const std::string& source) {
  const std::string scope = prefix + "bert.";
  std::map<std::string, Tensor> wanted;
  for (const auto& [name, t] : tensors) {
    if (!name.starts_with(scope)) continue;
    const std::string key = name.substr(prefix.size());
    if (key == "bert.embeddings.position_ids") continue;  // arange(max_positions), a buffer
    BVLLM_REQUIRE(wanted.emplace(key, t).second, source, ": tensor '", name, "' appears twice");
  }
  BVLLM_REQUIRE(!wanted.empty(), source, ": no Q-Former tensors (none is named '", scope, "*')");
  model.load_state_dict(wanted,
                        {.source = prefix.empty() ? source : str_cat(source, " (tensors under '", prefix, "')")});
}

}  // namespace bvllm::layers
