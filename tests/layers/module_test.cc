// Module: Hugging Face names from the tree, train/eval, freezing by glob and regex, dtype and
// device conversion, and load_state_dict's errors.
#include "layers/module.h"

#include <gtest/gtest.h>

#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/rms_norm.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/messages.h"

namespace bvllm::layers {
namespace {

using testing::error_of;

// model.{embed, layers.{0,1}.{proj, norm}, head}
class Block : public Module {
 public:
  Block() {
    proj = register_module("proj", std::make_shared<Linear>(4, 3, true));
    norm = register_module("norm", std::make_shared<RMSNorm>(3, 1e-6));
  }
  std::shared_ptr<Linear> proj;
  std::shared_ptr<RMSNorm> norm;
};

class Toy : public Module {
 public:
  Toy() {
    embed = register_module("embed", std::make_shared<Embedding>(10, 4));
    layers = register_module("layers", std::make_shared<ModuleList<Block>>());
    layers->push_back(std::make_shared<Block>());
    layers->push_back(std::make_shared<Block>());
    head = register_module("head", std::make_shared<Linear>(3, 10, false));
    Generator gen{3, 0, 0};
    reset_parameters(gen, 0.5);
  }
  std::shared_ptr<Embedding> embed;
  std::shared_ptr<ModuleList<Block>> layers;
  std::shared_ptr<Linear> head;
};

std::vector<std::string> names(const NamedTensors& tensors) {
  std::vector<std::string> out;
  for (const auto& [name, t] : tensors) out.push_back(name);
  return out;
}

TEST(Module, FullNamesFollowTheTreeInRegistrationOrder) {
  Toy toy;
  EXPECT_EQ(
      names(toy.named_parameters()),
      (std::vector<std::string>{"embed.weight", "layers.0.proj.weight", "layers.0.proj.bias", "layers.0.norm.weight",
                                "layers.1.proj.weight", "layers.1.proj.bias", "layers.1.norm.weight", "head.weight"}));
  EXPECT_EQ(names(toy.named_parameters("model"))[0], "model.embed.weight");
  EXPECT_EQ(toy.num_parameters(), 40 + 2 * (12 + 3 + 3) + 30);
  EXPECT_EQ(toy.find_module("layers.1.proj"), toy.layers->begin()[1]->proj.get());
  EXPECT_EQ(toy.find_module("layers.2"), nullptr);
  ASSERT_NE(toy.find_parameter("layers.1.norm.weight"), nullptr);
  EXPECT_TRUE(toy.find_parameter("layers.1.norm.weight")->same((*toy.layers)[1].norm->weight()));
  EXPECT_EQ(toy.find_parameter("layers.1.norm.bias"), nullptr);
  std::vector<std::string> modules;
  for (auto& [name, m] : toy.named_modules()) modules.push_back(name);
  EXPECT_EQ(modules, (std::vector<std::string>{"", "embed", "layers", "layers.0", "layers.0.proj", "layers.0.norm",
                                               "layers.1", "layers.1.proj", "layers.1.norm", "head"}));
  // Parameters are leaves that require grad; norms start at one, biases at zero.
  for (const auto& [name, p] : toy.named_parameters()) EXPECT_TRUE(p.is_leaf() && p.requires_grad()) << name;
  EXPECT_EQ((*toy.layers)[0].norm->weight().to_vector<float>(), std::vector<float>(3, 1.0f));
  EXPECT_EQ((*toy.layers)[0].proj->bias().to_vector<float>(), std::vector<float>(3, 0.0f));
}

TEST(Module, TrainAndEvalReachEveryDescendant) {
  Toy toy;
  EXPECT_TRUE(toy.is_training());
  toy.eval();
  for (auto& [name, m] : toy.named_modules()) EXPECT_FALSE(m->is_training()) << name;
  toy.train();
  for (auto& [name, m] : toy.named_modules()) EXPECT_TRUE(m->is_training()) << name;
}

TEST(Module, FreezingByGlobAndRegex) {
  Toy toy;
  toy.set_requires_grad(false);
  EXPECT_TRUE(toy.named_trainable_parameters().empty());
  EXPECT_EQ(toy.unfreeze(NamePattern::glob("layers.*.proj.*")), 4);
  EXPECT_EQ(names(toy.named_trainable_parameters()),
            (std::vector<std::string>{"layers.0.proj.weight", "layers.0.proj.bias", "layers.1.proj.weight",
                                      "layers.1.proj.bias"}));
  EXPECT_EQ(toy.freeze(NamePattern::regex(R"(layers\.\d+\.proj\.bias)")), 2);
  EXPECT_EQ(names(toy.named_trainable_parameters()),
            (std::vector<std::string>{"layers.0.proj.weight", "layers.1.proj.weight"}));
  // Whole-name matches only; a typo matches nothing and the count says so.
  EXPECT_EQ(toy.freeze(NamePattern::regex("proj")), 0);
  EXPECT_EQ(toy.freeze(NamePattern::glob("layer.*")), 0);
  EXPECT_NE(error_of([] { NamePattern::regex("(unclosed"); }).find("not a valid regular expression"),
            std::string::npos);
  // Frozen parameters get no gradient.
  Tensor x = toy.embed->forward(Tensor::from<int64_t>({1, 2}));
  ops::sum(toy.head->forward((*toy.layers)[0].proj->forward(x))).backward();
  EXPECT_TRUE((*toy.layers)[0].proj->weight().grad().defined());
  EXPECT_FALSE(toy.head->weight().grad().defined());
  EXPECT_FALSE(toy.embed->weight().grad().defined());
}

TEST(Module, ToDtypeConvertsEveryParameterKeepingRequiresGrad) {
  Toy toy;
  toy.freeze(NamePattern::glob("head.*"));
  std::vector<float> before = toy.head->weight().to_vector<float>();
  toy.to(DType::BF16);
  for (const auto& [name, p] : toy.named_parameters()) {
    EXPECT_EQ(p.dtype(), DType::BF16) << name;
    EXPECT_EQ(p.requires_grad(), name.rfind("head.", 0) != 0) << name;
  }
  toy.to(DType::F32);
  std::vector<float> after = toy.head->weight().to_vector<float>();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_NEAR(after[i], before[i], std::abs(before[i]) / 128);
  toy.to(Device::cpu());  // same device: nothing to do
}

TEST(Module, LoadStateDictReplacesValuesAndReportsEveryProblem) {
  Toy a, b;
  Generator gen{9, 0, 0};
  b.reset_parameters(gen, 1.0);
  std::map<std::string, Tensor> state;
  for (const auto& [name, t] : b.state_dict()) state[name] = t;
  a.load_state_dict(state);
  for (const auto& [name, t] : a.named_parameters()) {
    EXPECT_EQ(t.to_vector<float>(), state[name].to_vector<float>()) << name;
    EXPECT_FALSE(t.shares_storage(state[name])) << name;  // copied by default
    EXPECT_TRUE(t.requires_grad()) << name;
  }
  // f64 and bf16 sources convert to the parameters' dtype.
  std::map<std::string, Tensor> wide;
  for (const auto& [name, t] : state) wide[name] = t.to(DType::F64);
  a.load_state_dict(wide);
  EXPECT_EQ(a.head->weight().dtype(), DType::F32);

  std::map<std::string, Tensor> broken = state;
  broken.erase("layers.1.proj.bias");
  broken["layers.0.norm.weight"] = ops::ones({5});
  broken["layers.0.extra"] = ops::ones({1});
  std::vector<float> kept = a.head->weight().to_vector<float>();
  std::string e = error_of([&] { a.load_state_dict(broken, {.source = "ckpt.safetensors"}); });
  EXPECT_NE(e.find("ckpt.safetensors does not match the model (3 problems)"), std::string::npos) << e;
  EXPECT_NE(e.find("missing tensor 'layers.1.proj.bias'"), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'layers.0.norm.weight' in ckpt.safetensors has shape [5], the model expects [3]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("unexpected tensor 'layers.0.extra'"), std::string::npos) << e;
  EXPECT_EQ(a.head->weight().to_vector<float>(), kept);  // nothing changed
  // Partial loads on request.
  broken.erase("layers.0.norm.weight");
  a.load_state_dict(broken, {.allow_missing = true, .allow_unexpected = true});
}

}  // namespace
}  // namespace bvllm::layers

namespace bvllm::layers {
namespace {

TEST(Module, ParameterDeviceScopeBuildsWithoutBytes) {
  std::shared_ptr<Linear> meta_linear;
  std::shared_ptr<RMSNorm> meta_norm;
  {
    ParameterDeviceScope scope(Device::meta());
    meta_linear = std::make_shared<Linear>(4096, 11008, true);
    meta_norm = std::make_shared<RMSNorm>(4096, 1e-6);
  }
  EXPECT_TRUE(meta_linear->weight().device().is_meta());
  EXPECT_TRUE(meta_norm->weight().device().is_meta());
  EXPECT_EQ(meta_linear->num_parameters(), 4096 * 11008 + 11008);
  EXPECT_EQ(meta_linear->weight().shape(), (Shape{11008, 4096}));
  // Reading a meta tensor is refused with an explanation, not a crash.
  try {
    (void)meta_linear->weight().to_vector<float>();
    FAIL() << "reading a meta tensor must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("meta device"), std::string::npos) << e.what();
  }
  // The scope ends: modules built afterwards are on the CPU again.
  Linear cpu_linear(2, 3, false);
  EXPECT_TRUE(cpu_linear.weight().device().is_cpu());
}

}  // namespace
}  // namespace bvllm::layers
