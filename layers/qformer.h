// The Q-Former: LAVIS Qformer.py's BertModel (no pooler) as B-VLLM runs it for both of its
// selectors, initialised from InstructBLIP's (../shared/research/bvllm.md §2.3, §4, §12.6).
//
//   text  = word_embeddings(ids) + position_embeddings(0..L-1)          (no token types)
//   x0    = dropout(LayerNorm(concat[queries ; text]))                  queries get no position
//   layer l (post-LN BERT):
//     a   = LN(x + dropout(dense(self_attention(x))))    joint, bidirectional over [queries; text],
//                                                          keys masked by [1]*nq ++ text_mask
//     q   = a[:, :nq];  if l % cross_attention_freq == 0:
//     q   = LN(q + dropout(dense(cross_attention(q, encoder_states))))  all encoder keys visible
//     x   = concat[LN(q + dropout(output_query(gelu(intermediate_query(q))))) ;
//                  LN(t + dropout(output(gelu(intermediate(t))))) ]      t = a[:, nq:]
//   output = x[:, :nq] after the last layer
//
// Attention scores are scaled by 1/sqrt(head_dim); GELU is exact. Dropout (hidden states and
// attention probabilities) acts in training mode only. Parameter names are LAVIS's under `bert.`
// (bert.embeddings.word_embeddings.weight, bert.encoder.layer.N.attention.self.query.weight,
// ...), so a B-VLLM model that registers a QFormer as vlm_att_encoder_temporal gets
// model.vlm_att_encoder_temporal.bert.*; the buffer bert.embeddings.position_ids is not a
// parameter (load_qformer ignores it).
#pragma once

#include <memory>
#include <string>

#include "layers/embedding.h"
#include "layers/layer_norm.h"
#include "layers/linear.h"
#include "layers/module.h"

namespace bvllm::layers {

struct QFormerConfig {
  int64_t vocab_size = 30523;  // bert-base-uncased + [DEC]
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 512;
  int64_t encoder_width = 1408;  // EVA ViT-g's width: the cross-attention keys' input
  int64_t cross_attention_freq = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  double initializer_range = 0.02;  // BertPreTrainedModel._init_weights

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  bool has_cross_attention(int64_t layer) const { return layer % cross_attention_freq == 0; }

  // InstructBLIP's Q-Former: bert-base-uncased with cross-attention to 1408-wide EVA features on
  // every second layer.
  static QFormerConfig bert_base();
  // Throws bvllm::Error naming `origin` and the field when a size is not positive, hidden_size is
  // not a multiple of num_attention_heads, or a probability is outside [0, 1).
  void validate(const std::string& origin = "QFormerConfig") const;
};

// BertEmbeddings: word_embeddings, position_embeddings, LayerNorm (+ dropout).
class QFormerEmbeddings : public Module {
 public:
  QFormerEmbeddings(const QFormerConfig& config, DType dtype = DType::F32);
  // queries [B, nq, H]; ids [B, L] (L may be 0) -> dropout(LN(concat[queries; word + position])).
  Tensor forward(const Tensor& queries, const Tensor& ids) const;

  std::shared_ptr<Embedding> word_embeddings, position_embeddings;
  std::shared_ptr<LayerNorm> layer_norm;  // "LayerNorm"

 private:
  double dropout_;
};

// BertSelfAttention: query from the hidden states, key and value from `context` (the hidden
// states themselves, or the encoder states for cross-attention).
class QFormerSelfAttention : public Module {
 public:
  QFormerSelfAttention(const QFormerConfig& config, int64_t context_width, DType dtype = DType::F32);
  // hidden [B, Lq, H], context [B, Lk, Ck], key_mask bool [B, Lk] (true = attend) or undefined.
  Tensor forward(const Tensor& hidden, const Tensor& context, const Tensor& key_mask) const;

  std::shared_ptr<Linear> query, key, value;

 private:
  int64_t heads_;
  double dropout_;
};

// BertSelfOutput and BertOutput: LN(input + dropout(dense(hidden))).
class QFormerOutput : public Module {
 public:
  QFormerOutput(int64_t in_features, const QFormerConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& hidden, const Tensor& input) const;

  std::shared_ptr<Linear> dense;
  std::shared_ptr<LayerNorm> layer_norm;  // "LayerNorm"

 private:
  double dropout_;
};

// BertAttention: self (the attention) and output (dense + residual + LayerNorm).
class QFormerAttention : public Module {
 public:
  QFormerAttention(const QFormerConfig& config, int64_t context_width, DType dtype = DType::F32);
  Tensor forward(const Tensor& hidden, const Tensor& context, const Tensor& key_mask) const;

  std::shared_ptr<QFormerSelfAttention> self;
  std::shared_ptr<QFormerOutput> output;
};

// BertIntermediate: gelu(dense(x)).
class QFormerIntermediate : public Module {
 public:
  QFormerIntermediate(const QFormerConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;

  std::shared_ptr<Linear> dense;
};

class QFormerLayer : public Module {
 public:
  QFormerLayer(const QFormerConfig& config, int64_t index, DType dtype = DType::F32);
  // x [B, nq + L, H]; key_mask bool [B, nq + L] or undefined; encoder [B, Lk, Cv]. The text
  // slice's FFN runs on the last layer too, although nothing reads it: as in LAVIS, its
  // parameters then get a zero gradient rather than none (an optimizer treats them alike).
  Tensor forward(const Tensor& x, int64_t num_queries, const Tensor& key_mask, const Tensor& encoder) const;

  std::shared_ptr<QFormerAttention> attention;
  std::shared_ptr<QFormerAttention> crossattention;  // null on layers without cross-attention
  std::shared_ptr<QFormerIntermediate> intermediate, intermediate_query;
  std::shared_ptr<QFormerOutput> output, output_query;
};

// BertEncoder: layer.N.
class QFormerEncoder : public Module {
 public:
  QFormerEncoder(const QFormerConfig& config, DType dtype = DType::F32);

  std::shared_ptr<ModuleList<QFormerLayer>> layer;
};

// BertModel (add_pooling_layer=False): embeddings and encoder.
class QFormerBert : public Module {
 public:
  QFormerBert(const QFormerConfig& config, DType dtype = DType::F32);

  std::shared_ptr<QFormerEmbeddings> embeddings;
  std::shared_ptr<QFormerEncoder> encoder;
};

// Parameters are allocated, not initialized: load InstructBLIP's Q-Former with load_qformer, or
// call init_weights.
class QFormer : public Module {
 public:
  QFormer(const QFormerConfig& config, DType dtype = DType::F32);

  // query_embeds [1 or B, nq, H] (a batch of 1 is broadcast); ids [B, L] i64/i32 with
  // L <= max_position_embeddings (L = 0: no text); text_mask [B, L] of any dtype, non-zero = a
  // real token (padding is neither attended to nor changes the queries); encoder_states
  // [B, Lk, encoder_width]. Floating inputs are cast to the parameters' dtype. -> [B, nq, H], the
  // query slice of the last layer.
  Tensor forward(const Tensor& query_embeds, const Tensor& ids, const Tensor& text_mask,
                 const Tensor& encoder_states) const;

  const QFormerConfig& config() const { return config_; }

  // BERT's init (BertPreTrainedModel._init_weights): Linears and Embeddings normal(0, std),
  // biases zero, LayerNorms one/zero.
  void init_weights(Generator& gen) { reset_parameters(gen, config_.initializer_range); }

  std::shared_ptr<QFormerBert> bert;

 private:
  QFormerConfig config_;
};

// Loads the tensors named `prefix` + "bert.*" (InstructBLIP's files: prefix "Qformer."; a B-VLLM
// checkpoint: "model.vlm_att_encoder_temporal.") into `model`, converted to its dtype. Tensors
// outside `prefix` + "bert." are not looked at (InstructBLIP's file also holds the vision encoder,
// query_tokens, ln_vision, the LLM projection); bert.embeddings.position_ids (a buffer) is skipped.
// Missing, mis-shaped and unexpected bert.* tensors throw one bvllm::Error naming each and `source`.
void load_qformer(QFormer& model, const NamedTensors& tensors, const std::string& prefix, const std::string& source);

}  // namespace bvllm::layers
