// The Q-Former against the PyTorch reference (tests/reference/make_bvllm_fixtures.py, LAVIS
// Qformer.py's BertModel re-computed with explicit attention and the additive -10000 mask): query
// states and the gradients of every parameter, the queries and the encoder states; an f64
// finite-difference gradcheck on a tinier configuration; what the text mask does; dropout; the
// parameter names, the loader, the errors, and the bert-base sizes of research/bvllm.md §12.6.
#include "layers/qformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <set>
#include <sstream>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"
#include "tests/support/messages.h"
#include "tests/support/tiny_models.h"

namespace bvllm::layers {
namespace {

using testing::error_of;
using testing::sci;

using testing::Fixture;
using testing::rel_error;

constexpr double kTolerance = 1e-5;  // f32, relative to the reference's largest magnitude

QFormerConfig tiny() { return testing::tiny_qformer_config(); }

std::shared_ptr<QFormer> loaded(const QFormerConfig& c = tiny(), DType dtype = DType::F32) {
  auto model = std::make_shared<QFormer>(c, dtype);
  load_qformer(*model, Fixture("qformer").tensors(), "param.", "qformer.safetensors");
  return model;
}

TEST(QFormer, QueryStatesAndGradientsMatchPyTorch) {
  Fixture f("qformer");
  auto model = loaded();
  model->eval();  // as the fixture: no dropout
  Tensor query = f["input.query"].clone(), encoder = f["input.encoder"].clone();
  query.set_requires_grad(true);
  encoder.set_requires_grad(true);
  Tensor out = model->forward(query, f["input.ids"], f["input.text_mask"], encoder);
  ASSERT_EQ(out.shape(), (Shape{2, 6, 32}));
  double err = rel_error(out, f["output.query_states"]);
  RecordProperty("query_states_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);

  ops::sum(ops::mul(out, f["input.grad_weight"])).backward();
  // A key bias adds q.b to every score of a row, which softmax ignores: its gradient is zero
  // analytically and both sides hold rounding noise (~1e-7), so it is measured against the largest
  // gradient of all. The last layer's text FFN feeds nothing: zero on both sides, exactly.
  double scale = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    for (double v : f["grad." + name].to_vector<double>()) scale = std::max(scale, std::abs(v));
  }
  double worst = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    double e = rel_error(p.grad(), f["grad." + name]);
    if (name.ends_with("self.key.bias")) {
      std::vector<double> ours = p.grad().to_vector<double>();
      double largest = 0;
      for (double v : ours) largest = std::max(largest, std::abs(v));
      e = largest / scale;
    }
    worst = std::max(worst, e);
    EXPECT_LT(e, kTolerance) << name;
  }
  RecordProperty("worst_param_grad_rel_error", sci(worst));
  const double eq = rel_error(query.grad(), f["grad.input.query"]);
  const double ee = rel_error(encoder.grad(), f["grad.input.encoder"]);
  RecordProperty("query_grad_rel_error", sci(eq));
  RecordProperty("encoder_grad_rel_error", sci(ee));
  EXPECT_LT(eq, kTolerance);
  EXPECT_LT(ee, kTolerance);
}

TEST(QFormer, Bf16WeightsStayCloseToTheF32Reference) {
  // Not a parity claim (PyTorch ran in f32): bf16 weights, f32 inputs cast to bf16.
  Fixture f("qformer");
  auto model = loaded(tiny(), DType::BF16);
  NoGradGuard no_grad;
  Tensor out = model->forward(f["input.query"], f["input.ids"], f["input.text_mask"], f["input.encoder"]);
  EXPECT_EQ(out.dtype(), DType::BF16);
  double err = rel_error(out.to(DType::F32), f["output.query_states"]);
  RecordProperty("bf16_query_states_rel_error", sci(err));
  EXPECT_LT(err, 5e-2);
}

TEST(QFormer, TextMaskHidesPaddingAndTextMatters) {
  Fixture f("qformer");
  auto model = loaded();
  NoGradGuard no_grad;
  Tensor query = f["input.query"], encoder = f["input.encoder"], mask = f["input.text_mask"];
  Tensor ids = f["input.ids"];
  ASSERT_EQ(mask.to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 0, 0}));  // row 1: 3 tokens
  Tensor base = model->forward(query, ids, mask, encoder);
  auto with_id = [&](int64_t row, int64_t col, int64_t id) {
    std::vector<int64_t> v = ids.to_vector<int64_t>();
    v[row * 5 + col] = id;
    return model->forward(query, Tensor::from<int64_t>(v, {2, 5}), mask, encoder);
  };
  // A padded position's id changes nothing (its key is masked in every layer).
  EXPECT_EQ(rel_error(with_id(1, 4, 17), base), 0.0);
  // A real token's id changes its row, and only its row.
  Tensor changed = with_id(1, 1, (ids.to_vector<int64_t>()[6] + 1) % 40);
  EXPECT_GT(rel_error(changed.narrow(0, 1, 1), base.narrow(0, 1, 1)), 1e-3);
  EXPECT_EQ(rel_error(changed.narrow(0, 0, 1), base.narrow(0, 0, 1)), 0.0);
  // Row 1 alone and unpadded gives the same states.
  Tensor short_row = model->forward(query, ids.narrow(0, 1, 1).narrow(1, 0, 3), mask.narrow(0, 1, 1).narrow(1, 0, 3),
                                    encoder.narrow(0, 1, 1));
  EXPECT_LT(rel_error(short_row, base.narrow(0, 1, 1)), 1e-6);
  // Without the mask the padding would be seen: a check that the mask is what hides it.
  Tensor unmasked = model->forward(query, ids, ops::ones({2, 5}, DType::I64), encoder);
  EXPECT_GT(rel_error(unmasked.narrow(0, 1, 1), base.narrow(0, 1, 1)), 1e-3);
  // No text (L = 0) equals text that is entirely masked: queries only.
  Tensor none = model->forward(query, Tensor::empty({2, 0}, DType::I64), Tensor::empty({2, 0}, DType::I64), encoder);
  Tensor all_masked = model->forward(query, ids, ops::zeros({2, 5}, DType::I64), encoder);
  ASSERT_EQ(none.shape(), (Shape{2, 6, 32}));
  EXPECT_LT(rel_error(none, all_masked), 1e-6);
  EXPECT_GT(rel_error(none, base), 1e-3);
  // A batch of queries equal to the broadcast one gives the same states.
  Tensor both = model->forward(ops::concat({query, query}, 0), ids, mask, encoder);
  EXPECT_EQ(rel_error(both, base), 0.0);
}

TEST(QFormer, GradcheckInF64) {
  // Tinier: 2 layers (cross-attention on layer 0 only), 2 heads of 2, a padded text row.
  QFormerConfig c;
  c.vocab_size = 6;
  c.hidden_size = 4;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 6;
  c.max_position_embeddings = 5;
  c.encoder_width = 3;
  c.layer_norm_eps = 1e-5;
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 0.0;
  QFormer model(c, DType::F64);
  {
    NoGradGuard no_grad;
    uint64_t seed = 100;
    for (auto& [name, p] : model.named_parameters()) {
      Tensor value = testing::rand_f64(p.shape(), seed++, false);
      if (name.ends_with("LayerNorm.weight")) value = ops::add(ops::mul(value, 0.2), 1.0);
      model.find_parameter(name)->copy_(value);
    }
  }
  Tensor ids = Tensor::from<int64_t>({1, 4, 2, 5, 3, 0}, {2, 3});
  Tensor mask = Tensor::from<int64_t>({1, 1, 1, 1, 1, 0}, {2, 3});
  std::vector<Tensor> inputs = {testing::rand_f64({1, 3, 4}, 1), testing::rand_f64({2, 4, 3}, 2)};
  for (const Tensor& p : model.parameters()) inputs.push_back(p);  // perturbed in place
  std::string e =
      testing::gradcheck([&](const std::vector<Tensor>& in) { return model.forward(in[0], ids, mask, in[1]); }, inputs);
  EXPECT_EQ(e, "");
}

TEST(QFormer, DropoutActsInTrainingOnly) {
  Fixture f("qformer");
  QFormerConfig c = tiny();
  c.hidden_dropout_prob = 0.1;
  c.attention_probs_dropout_prob = 0.1;
  auto model = loaded(c);
  NoGradGuard no_grad;
  auto run = [&] { return model->forward(f["input.query"], f["input.ids"], f["input.text_mask"], f["input.encoder"]); };
  model->eval();
  EXPECT_LT(rel_error(run(), f["output.query_states"]), kTolerance);
  model->train();
  manual_seed(7);
  Tensor a = run();
  manual_seed(7);
  Tensor b = run();
  EXPECT_EQ(rel_error(a, b), 0.0);  // the default generator decides
  EXPECT_GT(rel_error(a, f["output.query_states"]), 1e-3);

  // The explicit attention path (taken for attention dropout in training) computes the same
  // attention as the fused one: with a vanishing dropout it matches the reference.
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 1e-12;
  auto explicit_path = loaded(c);
  explicit_path->train();
  Tensor out = explicit_path->forward(f["input.query"], f["input.ids"], f["input.text_mask"], f["input.encoder"]);
  EXPECT_LT(rel_error(out, f["output.query_states"]), kTolerance);
}

TEST(QFormer, ParameterNamesAreLavis) {
  QFormerConfig c = tiny();
  c.num_hidden_layers = 2;
  QFormer model(c);
  std::vector<std::string> names;
  for (const auto& [name, t] : model.named_parameters()) names.push_back(name);
  std::vector<std::string> expected = {"bert.embeddings.word_embeddings.weight",
                                       "bert.embeddings.position_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                                       "bert.embeddings.LayerNorm.bias"};
  for (int layer = 0; layer < 2; ++layer) {
    const std::string pre = "bert.encoder.layer." + std::to_string(layer) + ".";
    std::vector<std::string> modules = {"attention.self.query", "attention.self.key", "attention.self.value",
                                        "attention.output.dense", "attention.output.LayerNorm"};
    if (layer == 0) {
      for (const char* m : {"crossattention.self.query", "crossattention.self.key", "crossattention.self.value",
                            "crossattention.output.dense", "crossattention.output.LayerNorm"})
        modules.push_back(m);
    }
    for (const char* m : {"intermediate.dense", "output.dense", "output.LayerNorm", "intermediate_query.dense",
                          "output_query.dense", "output_query.LayerNorm"})
      modules.push_back(m);
    for (const auto& m : modules) {
      expected.push_back(pre + m + ".weight");
      expected.push_back(pre + m + ".bias");
    }
  }
  EXPECT_EQ(names, expected);
  EXPECT_EQ(model.find_parameter("bert.encoder.layer.0.crossattention.self.key.weight")->shape(), (Shape{32, 24}));
  EXPECT_EQ(model.find_parameter("bert.encoder.layer.0.output.dense.weight")->shape(), (Shape{32, 48}));

  // The 4-layer model has exactly the fixture's parameters.
  std::set<std::string> ours, theirs;
  for (const auto& [name, t] : QFormer(tiny()).named_parameters()) ours.insert(name);
  for (const auto& [name, t] : Fixture("qformer").tensors())
    if (name.starts_with("param.")) theirs.insert(name.substr(6));
  EXPECT_EQ(ours, theirs);
}

TEST(QFormer, BertBaseSizesAreInstructBlips) {
  // research/bvllm.md §12.6: 329 state-dict keys (with the position_ids buffer) and 185.66M
  // parameters per Q-Former.
  const QFormerConfig c = QFormerConfig::bert_base();
  EXPECT_EQ(c.head_dim(), 64);
  std::unique_ptr<QFormer> model;
  {
    ParameterDeviceScope scope(Device::meta());
    model = std::make_unique<QFormer>(c, DType::BF16);
  }
  EXPECT_EQ(model->named_parameters().size() + 1, 329u);
  EXPECT_EQ(model->num_parameters(), 185660160);
  EXPECT_EQ(model->find_parameter("bert.embeddings.word_embeddings.weight")->shape(), (Shape{30523, 768}));
  EXPECT_EQ(model->find_parameter("bert.encoder.layer.10.crossattention.self.value.weight")->shape(),
            (Shape{768, 1408}));
  EXPECT_EQ(model->find_parameter("bert.encoder.layer.11.crossattention.self.value.weight"), nullptr);
  EXPECT_EQ(model->find_parameter("bert.encoder.layer.11.intermediate_query.dense.weight")->shape(),
            (Shape{3072, 768}));
}

TEST(QFormer, InitWeightsIsBerts) {
  QFormer model(tiny());
  Generator gen{9, 0, 0};
  model.init_weights(gen);
  const auto& q = *(*model.bert->encoder->layer)[0].attention->self->query;
  EXPECT_EQ(q.bias().to_vector<float>(), std::vector<float>(32, 0.0f));
  std::vector<float> w = model.bert->embeddings->word_embeddings->weight().to_vector<float>();
  double sum2 = 0;
  for (float v : w) sum2 += v * v;
  EXPECT_NEAR(std::sqrt(sum2 / w.size()), 0.02, 0.002);
  EXPECT_EQ(model.bert->embeddings->layer_norm->weight().to_vector<float>(), std::vector<float>(32, 1.0f));
  for (const auto& [name, p] : model.named_parameters()) EXPECT_TRUE(p.requires_grad()) << name;  // trainable
}

TEST(QFormer, LoaderTakesInstructBlipNamesAndReportsProblems) {
  Fixture f("qformer");
  // InstructBLIP's layout: Qformer.bert.* beside the buffer, query tokens, ln_vision, llm_proj.
  NamedTensors blip;
  for (const auto& [name, t] : Fixture("qformer").tensors())
    if (name.starts_with("param.")) blip.emplace_back("Qformer." + name.substr(6), t);
  blip.emplace_back("Qformer.bert.embeddings.position_ids", ops::arange(0, 24).reshape({1, 24}));
  blip.emplace_back("query_tokens", ops::zeros({1, 6, 32}));
  blip.emplace_back("ln_vision.weight", ops::ones({24}));
  blip.emplace_back("llm_proj.weight", ops::ones({16, 32}));
  QFormer model(tiny());
  load_qformer(model, blip, "Qformer.", "/x/instruct_blip.pth");
  NoGradGuard no_grad;
  EXPECT_LT(rel_error(model.forward(f["input.query"], f["input.ids"], f["input.text_mask"], f["input.encoder"]),
                      f["output.query_states"]),
            kTolerance);

  auto without = [&](const std::string& drop) {
    NamedTensors out;
    for (const auto& [name, t] : blip)
      if (name != drop) out.emplace_back(name, t);
    return out;
  };
  std::string e = error_of([&] {
    load_qformer(model, without("Qformer.bert.encoder.layer.2.crossattention.self.key.bias"), "Qformer.",
                 "/x/instruct_blip.pth");
  });
  EXPECT_NE(e.find("/x/instruct_blip.pth"), std::string::npos) << e;
  EXPECT_NE(e.find("missing tensor 'bert.encoder.layer.2.crossattention.self.key.bias'"), std::string::npos) << e;

  NamedTensors misshaped = without("Qformer.bert.encoder.layer.0.crossattention.self.key.weight");
  misshaped.emplace_back("Qformer.bert.encoder.layer.0.crossattention.self.key.weight", ops::zeros({32, 1408}));
  e = error_of([&] { load_qformer(model, misshaped, "Qformer.", "/x/instruct_blip.pth"); });
  EXPECT_NE(e.find("tensor 'bert.encoder.layer.0.crossattention.self.key.weight' in /x/instruct_blip.pth (tensors "
                   "under 'Qformer.') has shape [32, 1408], the model expects [32, 24]"),
            std::string::npos)
      << e;

  // A cross-attention where this configuration has none (another cross_attention_freq).
  NamedTensors extra = blip;
  extra.emplace_back("Qformer.bert.encoder.layer.1.crossattention.self.query.weight", ops::zeros({32, 32}));
  e = error_of([&] { load_qformer(model, extra, "Qformer.", "/x/instruct_blip.pth"); });
  EXPECT_NE(e.find("unexpected tensor 'bert.encoder.layer.1.crossattention.self.query.weight'"), std::string::npos)
      << e;

  e = error_of([&] { load_qformer(model, blip, "model.vlm_att_encoder_temporal.", "/x/b.safetensors"); });
  EXPECT_NE(e.find("/x/b.safetensors: no Q-Former tensors (none is named 'model.vlm_att_encoder_temporal.bert.*')"),
            std::string::npos)
      << e;
}

TEST(QFormer, InputAndConfigErrors) {
  Fixture f("qformer");
  auto model = loaded();
  NoGradGuard no_grad;
  Tensor query = f["input.query"], encoder = f["input.encoder"];
  // 25 text tokens with 24 positions.
  Tensor long_ids = ops::ones({2, 25}, DType::I64);
  std::string e = error_of([&] { model->forward(query, long_ids, long_ids, encoder); });
  EXPECT_NE(e.find("25 text tokens, but max_position_embeddings is 24"), std::string::npos) << e;
  e = error_of([&] { model->forward(query, f["input.ids"], f["input.text_mask"], ops::zeros({2, 7, 16})); });
  EXPECT_NE(e.find("encoder states must be [B, Lk, 24], got [2, 7, 16]"), std::string::npos) << e;
  e = error_of([&] { model->forward(ops::zeros({3, 6, 32}), f["input.ids"], f["input.text_mask"], encoder); });
  EXPECT_NE(e.find("query embeddings must be [1 or 2, nq, 32]"), std::string::npos) << e;
  e = error_of([&] { model->forward(query, f["input.ids"], ops::ones({2, 4}, DType::I64), encoder); });
  EXPECT_NE(e.find("text_mask must have the shape of ids [2, 5], got [2, 4]"), std::string::npos) << e;
  Tensor bad_id = Tensor::from<int64_t>({1, 2, 40, 0, 0, 1, 2, 3, 0, 0}, {2, 5});
  e = error_of([&] { model->forward(query, bad_id, f["input.text_mask"], encoder); });
  EXPECT_NE(e.find("id 40 is outside the vocabulary [0, 40)"), std::string::npos) << e;

  auto error_for = [](auto edit) {
    QFormerConfig c = tiny();
    edit(c);
    return error_of([&] { c.validate("/x/qformer.json"); });
  };
  EXPECT_EQ(error_for([](QFormerConfig&) {}), "(no error)");
  e = error_for([](QFormerConfig& c) { c.num_attention_heads = 5; });
  EXPECT_NE(e.find("/x/qformer.json: hidden_size 32 is not a multiple of num_attention_heads 5"), std::string::npos)
      << e;
  e = error_for([](QFormerConfig& c) { c.cross_attention_freq = 0; });
  EXPECT_NE(e.find("/x/qformer.json: field 'cross_attention_freq' must be positive, got 0"), std::string::npos) << e;
  e = error_for([](QFormerConfig& c) { c.hidden_dropout_prob = 1.0; });
  EXPECT_NE(e.find("field 'hidden_dropout_prob' must be in [0, 1)"), std::string::npos) << e;
  QFormerConfig bad = tiny();
  bad.encoder_width = 0;
  e = error_of([&] { QFormer q(bad); });
  EXPECT_NE(e.find("QFormerConfig: field 'encoder_width' must be positive"), std::string::npos) << e;
}

}  // namespace
}  // namespace bvllm::layers
