// EVA ViT against the PyTorch reference (tests/reference/make_bvllm_fixtures.py, LAVIS eva_vit.py
// re-computed with F.conv2d and explicit attention): a tiny encoder loaded from a checkpoint whose
// pos_embed grid (2) differs from the model's (3), the interpolated pos_embed and the features;
// LAVIS's 16x16 -> 24x24 interpolation; the frozen contract; the loader's and the config's errors;
// and the paper-size configuration (577 tokens of 1408, built without bytes on the meta device).
#include "layers/eva_vit.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <sstream>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"
#include "tests/support/tiny_models.h"

namespace bvllm::layers {
namespace {

using testing::error_of;
using testing::sci;

using testing::Fixture;
using testing::rel_error;

constexpr double kTolerance = 1e-5;  // f32, relative to the reference's largest magnitude
constexpr char kSource[] = "eva_vit.safetensors";

EvaVitConfig tiny() { return testing::tiny_eva_config(); }

// The fixture's checkpoint tensors (`param.<LAVIS name>`) under their LAVIS names.
NamedTensors checkpoint() { return Fixture("eva_vit").tensors("param."); }

NamedTensors edited(const NamedTensors& tensors, const std::string& name, const Tensor& replacement) {
  NamedTensors out;
  for (const auto& [n, t] : tensors) {
    if (n != name)
      out.emplace_back(n, t);
    else if (replacement.defined())
      out.emplace_back(n, replacement);
  }
  return out;
}

TEST(EvaVit, FeaturesMatchPyTorchAfterPosEmbedInterpolation) {
  Fixture f("eva_vit");
  EvaVisionTransformer model(tiny());
  NamedTensors ckpt = checkpoint();
  EXPECT_EQ(f["param.pos_embed"].shape(), (Shape{1, 5, 24}));  // the checkpoint's 2x2 grid
  load_eva_vit(model, ckpt, kSource);
  EXPECT_EQ(model.pos_embed().shape(), (Shape{1, 10, 24}));
  double pos_err = rel_error(model.pos_embed(), f["output.pos_embed"]);
  RecordProperty("pos_embed_rel_error", sci(pos_err));
  EXPECT_LT(pos_err, kTolerance);
  // Every other parameter holds the checkpoint's values exactly.
  for (const auto& [name, t] : ckpt) {
    if (name == "pos_embed") continue;
    EXPECT_EQ(rel_error(*model.find_parameter(name), t), 0.0) << name;
  }
  Tensor features = model.forward(f["input.pixels"]);
  ASSERT_EQ(features.shape(), (Shape{2, 10, 24}));
  double err = rel_error(features, f["output.features"]);
  RecordProperty("features_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);
}

TEST(EvaVit, Bf16WeightsStayCloseToTheF32Reference) {
  // Not a parity claim (PyTorch ran in f32): bf16 weights and activations, f32 inside the ops.
  Fixture f("eva_vit");
  EvaVisionTransformer model(tiny(), DType::BF16);
  load_eva_vit(model, checkpoint(), kSource);
  EXPECT_EQ(model.pos_embed().dtype(), DType::BF16);
  Tensor features = model.forward(f["input.pixels"]);  // f32 pixels are cast to bf16
  EXPECT_EQ(features.dtype(), DType::BF16);
  double err = rel_error(features.to(DType::F32), f["output.features"]);
  RecordProperty("bf16_features_rel_error", sci(err));
  EXPECT_LT(err, 5e-2);
}

TEST(EvaVit, PosEmbedInterpolationIsLavis16To24) {
  Fixture f("eva_pos_embed");
  Tensor out = interpolate_pos_embed(f["input.pos_embed"], 24);
  ASSERT_EQ(out.shape(), (Shape{1, 577, 8}));
  double err = rel_error(out, f["output.pos_embed"]);
  RecordProperty("pos_embed_16_to_24_rel_error", sci(err));
  EXPECT_LT(err, kTolerance);
  // The CLS token is carried over untouched; the same grid comes back as is.
  EXPECT_EQ(rel_error(out.narrow(1, 0, 1), f["input.pos_embed"].narrow(1, 0, 1)), 0.0);
  Tensor input = f["input.pos_embed"];
  EXPECT_TRUE(interpolate_pos_embed(input, 16).same(input));
  // Half inputs are resized in f32, as LAVIS's .float().
  EXPECT_EQ(interpolate_pos_embed(f["input.pos_embed"].to(DType::BF16), 24).dtype(), DType::F32);
  std::string e = error_of([&] { interpolate_pos_embed(ops::zeros({1, 8, 4}), 3); });
  EXPECT_NE(e.find("7 positions after 1 extra token(s), not a square grid"), std::string::npos) << e;
}

TEST(EvaVit, IsFrozen) {
  Fixture f("eva_vit");
  EvaVisionTransformer model(tiny());
  EXPECT_GT(model.named_parameters().size(), 0u);
  for (const auto& [name, p] : model.named_parameters()) EXPECT_FALSE(p.requires_grad()) << name;
  EXPECT_TRUE(model.named_trainable_parameters().empty());
  load_eva_vit(model, checkpoint(), kSource);
  EXPECT_TRUE(model.named_trainable_parameters().empty());  // loading keeps the flags
  // Even with a parameter unfrozen and grad mode on, forward records nothing.
  model.set_requires_grad(true);
  Tensor pixels = f["input.pixels"].clone();
  pixels.set_requires_grad(true);
  Tensor features = model.forward(pixels);
  EXPECT_FALSE(features.requires_grad());
  EXPECT_EQ(features.grad_fn(), nullptr);
}

TEST(EvaVit, LoaderToleratesExtraTensorsAndAPrefix) {
  Fixture f("eva_vit");
  NamedTensors ckpt = checkpoint();
  // What LAVIS's strict=False load ignores: a 40th block, a final norm and a head.
  NamedTensors extended = ckpt;
  extended.emplace_back("blocks.2.norm1.weight", ops::ones({24}));
  extended.emplace_back("norm.weight", ops::ones({24}));
  extended.emplace_back("head.weight", ops::ones({5, 24}));
  EvaVisionTransformer model(tiny());
  load_eva_vit(model, extended, kSource);
  EXPECT_LT(rel_error(model.forward(f["input.pixels"]), f["output.features"]), kTolerance);
  // A whole-model checkpoint names the tower under a prefix; other tensors are not looked at.
  NamedTensors prefixed;
  for (const auto& [name, t] : ckpt) prefixed.emplace_back("model.vision_tower.vision_tower." + name, t);
  prefixed.emplace_back("model.embed_tokens.weight", ops::ones({3, 2}));
  EvaVisionTransformer again(tiny());
  load_eva_vit(again, prefixed, kSource, "model.vision_tower.vision_tower.");
  EXPECT_LT(rel_error(again.forward(f["input.pixels"]), f["output.features"]), kTolerance);
}

TEST(EvaVit, LoaderErrorsNameTheTensorAndSource) {
  NamedTensors ckpt = checkpoint();
  EvaVisionTransformer model(tiny());
  std::string e = error_of([&] { load_eva_vit(model, edited(ckpt, "blocks.1.attn.v_bias", Tensor()), "/x/eva.pth"); });
  EXPECT_NE(e.find("/x/eva.pth"), std::string::npos) << e;
  EXPECT_NE(e.find("missing tensor 'blocks.1.attn.v_bias'"), std::string::npos) << e;

  e = error_of([&] {
    load_eva_vit(model, edited(ckpt, "blocks.0.attn.qkv.weight", ops::zeros({71, 24})), "/x/eva.pth");
  });
  EXPECT_NE(e.find("tensor 'blocks.0.attn.qkv.weight' in /x/eva.pth has shape [71, 24], the model expects [72, 24]"),
            std::string::npos)
      << e;

  e = error_of([&] {
    load_eva_vit(model, edited(ckpt, "patch_embed.proj.weight", ops::zeros({24, 3, 16, 16})), "/x/eva.pth");
  });
  EXPECT_NE(e.find("tensor 'patch_embed.proj.weight' in /x/eva.pth has shape [24, 3, 16, 16]"), std::string::npos) << e;

  // A pos_embed whose positions are no square grid, and one of another width.
  e = error_of([&] { load_eva_vit(model, edited(ckpt, "pos_embed", ops::zeros({1, 7, 24})), "/x/eva.pth"); });
  EXPECT_NE(e.find("tensor 'pos_embed' in /x/eva.pth has shape [1, 7, 24]"), std::string::npos) << e;
  EXPECT_NE(e.find("not a square grid"), std::string::npos) << e;
  e = error_of([&] { load_eva_vit(model, edited(ckpt, "pos_embed", ops::zeros({1, 5, 16})), "/x/eva.pth"); });
  EXPECT_NE(e.find("tensor 'pos_embed' in /x/eva.pth has shape [1, 5, 16], the model expects [1, 10, 24]"),
            std::string::npos)
      << e;

  // The wrong image size is refused by name.
  e = error_of([&] { model.forward(ops::zeros({1, 3, 28, 28})); });
  EXPECT_NE(e.find("EVA ViT: pixels must be [N, 3, 42, 42], got [1, 3, 28, 28]"), std::string::npos) << e;
}

TEST(EvaVit, ConfigErrorsNameTheOriginAndField) {
  auto error_for = [](auto edit) {
    EvaVitConfig c = tiny();
    edit(c);
    return error_of([&] { c.validate("/x/vision.yaml"); });
  };
  EXPECT_EQ(error_for([](EvaVitConfig&) {}), "(no error)");
  std::string e = error_for([](EvaVitConfig& c) { c.image_size = 40; });
  EXPECT_NE(e.find("/x/vision.yaml: image_size 40 is not a multiple of patch_size 14"), std::string::npos) << e;
  e = error_for([](EvaVitConfig& c) { c.heads = 5; });
  EXPECT_NE(e.find("/x/vision.yaml: width 24 is not a multiple of heads 5"), std::string::npos) << e;
  e = error_for([](EvaVitConfig& c) { c.depth = 0; });
  EXPECT_NE(e.find("/x/vision.yaml: field 'depth' must be positive, got 0"), std::string::npos) << e;
  e = error_for([](EvaVitConfig& c) { c.layer_norm_eps = 0; });
  EXPECT_NE(e.find("'layer_norm_eps'"), std::string::npos) << e;
  EvaVitConfig bad = tiny();
  bad.patch_size = 0;
  e = error_of([&] { EvaVisionTransformer model(bad); });
  EXPECT_NE(e.find("EvaVitConfig: field 'patch_size' must be positive"), std::string::npos) << e;
}

TEST(EvaVit, PaperSizeConfiguration) {
  // research/bvllm.md §2.2: 336 px, patch 14, 24x24 + CLS = 577 tokens of 1408, depth 39,
  // 16 heads of 88, MLP int(1408 * 4.3637) = 6144.
  const EvaVitConfig c = EvaVitConfig::eva_vit_g();
  EXPECT_EQ(c.grid(), 24);
  EXPECT_EQ(c.num_tokens(), 577);
  EXPECT_EQ(c.width, 1408);
  EXPECT_EQ(c.depth, 39);
  EXPECT_EQ(c.heads, 16);
  EXPECT_EQ(c.head_dim(), 88);
  EXPECT_EQ(c.mlp_hidden, 6144);
  EXPECT_EQ(EvaVitConfig::mlp_hidden_for(24), 104);
  EXPECT_EQ(c.layer_norm_eps, 1e-6);
  // Built on the meta device: every LAVIS tensor with its shape, and the parameter count of the
  // formula (per block: two norms, qkv + q/v bias, proj, fc1, fc2).
  std::unique_ptr<EvaVisionTransformer> model;
  {
    ParameterDeviceScope scope(Device::meta());
    model = std::make_unique<EvaVisionTransformer>(c, DType::BF16);
  }
  const int64_t w = 1408, m = 6144;
  const int64_t block = 4 * w + 3 * w * w + 2 * w + (w * w + w) + (w * m + m) + (m * w + w);
  EXPECT_EQ(model->num_parameters(), 39 * block + (w * 3 * 14 * 14 + w) + w + 577 * w);
  auto params = model->named_parameters();
  EXPECT_EQ(params.size(), 4u + 39u * 13u);
  EXPECT_EQ(model->find_parameter("pos_embed")->shape(), (Shape{1, 577, 1408}));
  EXPECT_EQ(model->find_parameter("patch_embed.proj.weight")->shape(), (Shape{1408, 3, 14, 14}));
  EXPECT_EQ(model->find_parameter("blocks.38.attn.qkv.weight")->shape(), (Shape{4224, 1408}));
  EXPECT_EQ(model->find_parameter("blocks.38.mlp.fc1.weight")->shape(), (Shape{6144, 1408}));
  EXPECT_EQ(model->find_parameter("blocks.39.norm1.weight"), nullptr);
}

TEST(EvaVit, ParameterNamesAreLavis) {
  EvaVitConfig c = tiny();
  c.depth = 1;
  EvaVisionTransformer model(c);
  std::vector<std::string> names;
  for (const auto& [name, t] : model.named_parameters()) names.push_back(name);
  // LAVIS's state-dict order (a module's own tensors before its children's).
  EXPECT_EQ(names, (std::vector<std::string>{
                       "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                       "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
                       "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
                       "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
                       "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias"}));
  Generator gen{3, 0, 0};
  model.reset_parameters(gen, 0.02);
  EXPECT_EQ(model.blocks->begin()[0]->attn->q_bias().to_vector<float>(), std::vector<float>(24, 0.0f));
  EXPECT_EQ(model.blocks->begin()[0]->norm1->weight().to_vector<float>(), std::vector<float>(24, 1.0f));
}

// MAE's 2-D sin-cos table: the CLS row zero; patch (h, w) holds sin/cos of w then of h at the
// frequencies 1 / 10000^(k / (width / 4)), written out here for a 3 x 3 grid of width 8.
TEST(EvaVitTest, SincosPositionInitIsMaesTable) {
  const Tensor t = sincos_pos_embed(3, 8);
  ASSERT_EQ(t.shape(), Shape({1, 10, 8}));
  const std::vector<float> v = t.to_vector<float>();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(v[static_cast<size_t>(i)], 0.0f) << "CLS channel " << i;
  for (int h = 0; h < 3; ++h)
    for (int w = 0; w < 3; ++w) {
      const float* row = v.data() + (1 + h * 3 + w) * 8;
      const double omega[2] = {1.0, 0.01};  // 1 / 10000^(0/2), 1 / 10000^(1/2)
      for (int k = 0; k < 2; ++k) {
        EXPECT_NEAR(row[k], std::sin(w * omega[k]), 1e-7) << h << "," << w;
        EXPECT_NEAR(row[2 + k], std::cos(w * omega[k]), 1e-7);
        EXPECT_NEAR(row[4 + k], std::sin(h * omega[k]), 1e-7);
        EXPECT_NEAR(row[6 + k], std::cos(h * omega[k]), 1e-7);
      }
    }
  EXPECT_NE(error_of([] { sincos_pos_embed(3, 6); }).find("multiple of 4"), std::string::npos);

  // reset_parameters uses it only when asked; otherwise N(0, std) as before.
  EvaVitConfig c = testing::tiny_eva_config();
  c.sincos_position_init = true;
  EvaVisionTransformer with(c);
  Generator gen{3, 0, 0};
  with.reset_parameters(gen, 0.02);
  EXPECT_EQ(with.pos_embed().to_vector<float>(), sincos_pos_embed(c.grid(), c.width).to_vector<float>());
  c.sincos_position_init = false;
  EvaVisionTransformer without(c);
  without.reset_parameters(gen, 0.02);
  EXPECT_NE(without.pos_embed().to_vector<float>(), sincos_pos_embed(c.grid(), c.width).to_vector<float>());
}

}  // namespace
}  // namespace bvllm::layers
