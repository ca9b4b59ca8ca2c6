// Loading B-VLLM's starting weights from LAVIS .pth files written by torch.save with the real key
// names (tests/reference/make_lavis_fixtures.py): EVA with its grid interpolated and its extra
// block ignored, the InstructBLIP Q-Former into both encoders, query tokens and ln_vision; and the
// errors for files that do not fit.
#include "layers/bvllm_checkpoint.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "runtime/autograd.h"
#include "runtime/io/pth.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/tiny_models.h"

namespace bvllm::layers {
namespace {

using testing::rel_error;

std::string lavis(const std::string& name) {
  return std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/lavis/" + name;
}

std::map<std::string, Tensor> as_map(const NamedTensors& tensors) { return {tensors.begin(), tensors.end()}; }

TEST(BvllmCheckpoint, EvaLoadsNameForNameWithThePositionGridInterpolated) {
  BvllmForCausalLM model(testing::tiny_bvllm_config());
  load_lavis_vision_tower(model, lavis("eva_vit_g_tiny.pth"));
  auto file = as_map(load_pth(lavis("eva_vit_g_tiny.pth")));
  ASSERT_TRUE(file.count("blocks.2.attn.qkv.weight")) << "the file must hold a block beyond the model's depth";
  SafetensorsFile expected = SafetensorsFile::open(lavis("expected.safetensors"));
  const std::string vt = "model.vision_tower.vision_tower.";
  int64_t checked = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    if (name.rfind(vt, 0) != 0) continue;
    const std::string local = name.substr(vt.size());
    if (local == "pos_embed") {
      EXPECT_LT(rel_error(p, expected.tensor(name)), 1e-6);
    } else {
      EXPECT_EQ(rel_error(p, file.at(local)), 0.0) << local;
    }
    EXPECT_FALSE(p.requires_grad()) << "EVA stays frozen after loading: " << local;
    ++checked;
  }
  EXPECT_EQ(checked, 4 + 2 * 13);  // cls, pos, patch weight+bias; 13 tensors per block
}

TEST(BvllmCheckpoint, InstructBlipFillsBothQFormersQueriesAndNorms) {
  BvllmForCausalLM model(testing::tiny_bvllm_config());
  load_instructblip_qformers(model, lavis("instruct_blip_tiny.pth"));
  auto file = as_map(load_pth(lavis("instruct_blip_tiny.pth")));
  int64_t checked = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    std::string source;
    for (const char* which : {"temporal", "spatial"}) {
      const std::string encoder = std::string("model.vlm_att_encoder_") + which + ".";
      if (name.rfind(encoder, 0) == 0) source = "model.Qformer." + name.substr(encoder.size());
      if (name == std::string("model.vlm_att_query_") + which) source = "model.query_tokens";
      const std::string ln = std::string("model.vlm_att_ln_") + which + ".";
      if (name.rfind(ln, 0) == 0) source = "model.ln_vision." + name.substr(ln.size());
    }
    if (source.empty()) continue;
    ASSERT_TRUE(file.count(source)) << name << " <- " << source;
    EXPECT_EQ(rel_error(p, file.at(source)), 0.0) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 2 * (112 + 1 + 2));
}

TEST(BvllmCheckpoint, FilesThatDoNotFitAreRefusedAndChangeNothing) {
  auto expect_error = [](const std::function<void()>& load, const std::string& needle) {
    try {
      load();
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  BvllmForCausalLM model(testing::tiny_bvllm_config());
  // The EVA file is not an InstructBLIP checkpoint, and the other way round.
  expect_error([&] { load_instructblip_qformers(model, lavis("eva_vit_g_tiny.pth")); }, "Qformer.bert");
  expect_error([&] { load_lavis_vision_tower(model, lavis("instruct_blip_tiny.pth")); }, "instruct_blip_tiny.pth");
  expect_error([&] { load_lavis_vision_tower(model, lavis("missing.pth")); }, "missing.pth");
  // Query tokens of another count: named, and the Q-Formers are left as they were.
  layers::BvllmConfig five = testing::tiny_bvllm_config();
  five.num_query_tokens = 5;
  five.temporal_queries = 4;
  five.spatial_queries = 5;
  BvllmForCausalLM other(five);
  {
    NoGradGuard no_grad;
    for (auto [name, p] : other.named_parameters()) p.fill_(0.25);
  }
  expect_error([&] { load_instructblip_qformers(other, lavis("instruct_blip_tiny.pth")); }, "query_tokens");
  for (const auto& [name, p] : other.named_parameters()) {
    EXPECT_EQ(ops::sum(ops::abs(ops::add(p.to(DType::F32), -0.25))).item<float>(), 0.0f) << name << " changed";
  }
}

}  // namespace
}  // namespace bvllm::layers
