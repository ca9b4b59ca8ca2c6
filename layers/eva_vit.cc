#include "layers/eva_vit.h"

#include <glog/logging.h>

#include <cmath>
#include <map>
#include <set>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

// --- EvaVitConfig ------------------------------------------------------------------------------

int64_t EvaVitConfig::mlp_hidden_for(int64_t width) {
  // Python's int() of a positive float truncates, as the cast does.
  return static_cast<int64_t>(static_cast<double>(width) * 4.3637);
}

EvaVitConfig EvaVitConfig::eva_vit_g() {
  // LAVIS create_eva_vit_g: embed_dim 1408, depth 39, num_heads 1408 // 88, mlp_ratio 4.3637,
  // LayerNorm eps 1e-6; B-VLLM builds it for 336 px.
  EvaVitConfig c;
  c.image_size = 336;
  c.patch_size = 14;
  c.width = 1408;
  c.depth = 39;
  c.heads = 1408 / 88;
  c.mlp_hidden = mlp_hidden_for(1408);
  c.layer_norm_eps = 1e-6;
  return c;
}

void EvaVitConfig::validate(const std::string& origin) const {
  auto positive = [&](const char* field, int64_t v) {
    BVLLM_REQUIRE(v > 0, origin, ": field '", field, "' must be positive, got ", v);
  };
  positive("image_size", image_size);
  positive("patch_size", patch_size);
  positive("width", width);
  positive("depth", depth);
  positive("heads", heads);
  positive("mlp_hidden", mlp_hidden);
  BVLLM_REQUIRE(image_size % patch_size == 0, origin, ": image_size ", image_size, " is not a multiple of patch_size ",
                patch_size);
  BVLLM_REQUIRE(width % heads == 0, origin, ": width ", width, " is not a multiple of heads ", heads);
  BVLLM_REQUIRE(layer_norm_eps > 0, origin, ": field 'layer_norm_eps' must be positive, got ", layer_norm_eps);
}

// --- modules -----------------------------------------------------------------------------------

EvaPatchConv::EvaPatchConv(int64_t patch_size, int64_t width, DType dtype) : patch_(patch_size) {
  BVLLM_REQUIRE(patch_size > 0 && width > 0, "EvaPatchConv: patch size and width must be positive, got ", patch_size,
                " and ", width);
  weight_ = empty_parameter({width, 3, patch_size, patch_size}, dtype);
  bias_ = empty_parameter({width}, dtype);
  register_parameter("weight", &weight_);
  register_parameter("bias", &bias_);
}

Tensor EvaPatchConv::forward(const Tensor& pixels) const {
  const int64_t p = patch_;
  BVLLM_REQUIRE(pixels.dim() == 4 && pixels.size(1) == 3 && pixels.size(2) % p == 0 && pixels.size(3) % p == 0,
                "EvaPatchConv: pixels must be [N, 3, H, W] with H and W multiples of ", p, ", got ",
                shape_str(pixels.shape()));
  const int64_t n = pixels.size(0), gh = pixels.size(2) / p, gw = pixels.size(3) / p;
  // Patch (y, x) becomes row y * gw + x holding pixels[c, y p + i, x p + j] at c p^2 + i p + j:
  // the order of the convolution's weight [W, 3, p, p] flattened.
  Tensor rows = pixels.reshape({n, 3, gh, p, gw, p}).permute({0, 2, 4, 1, 3, 5}).reshape({n, gh * gw, 3 * p * p});
  return ops::linear(rows, weight_.view({weight_.size(0), 3 * p * p}), bias_);
}

void EvaPatchConv::reset_parameters(Generator& gen, double std) {
  NoGradGuard no_grad;
  weight_.copy_(ops::normal(weight_.shape(), gen, 0.0, std, DType::F32));
  bias_.zero_();
}

EvaPatchEmbed::EvaPatchEmbed(const EvaVitConfig& c, DType dtype) : image_size_(c.image_size) {
  proj = register_module("proj", std::make_shared<EvaPatchConv>(c.patch_size, c.width, dtype));
}

Tensor EvaPatchEmbed::forward(const Tensor& pixels) const {
  // LAVIS PatchEmbed asserts the size the position embedding was made for.
  BVLLM_REQUIRE(
      pixels.dim() == 4 && pixels.size(1) == 3 && pixels.size(2) == image_size_ && pixels.size(3) == image_size_,
      "EVA ViT: pixels must be [N, 3, ", image_size_, ", ", image_size_, "], got ", shape_str(pixels.shape()));
  return proj->forward(pixels);
}

EvaAttention::EvaAttention(const EvaVitConfig& c, DType dtype) : heads_(c.heads) {
  qkv = register_module("qkv", std::make_shared<Linear>(c.width, 3 * c.width, false, dtype));
  q_bias_ = empty_parameter({c.width}, dtype);
  v_bias_ = empty_parameter({c.width}, dtype);
  register_parameter("q_bias", &q_bias_);
  register_parameter("v_bias", &v_bias_);
  proj = register_module("proj", std::make_shared<Linear>(c.width, c.width, true, dtype));
}

Tensor EvaAttention::forward(const Tensor& x) const {
  const int64_t n = x.size(0), t = x.size(1), w = x.size(2), d = w / heads_;
  // LAVIS: qkv_bias = cat(q_bias, zeros_like(v_bias), v_bias); the keys get no bias.
  Tensor bias = ops::concat({q_bias_, ops::zeros_like(v_bias_), v_bias_}, 0);
  Tensor qkv_out = ops::linear(x, qkv->weight(), bias);                        // [N, T, 3W]
  Tensor parts = qkv_out.view({n, t, 3, heads_, d}).permute({2, 0, 3, 1, 4});  // [3, N, H, T, D]
  // Bidirectional, scale d^-0.5 (sdpa's default).
  Tensor a = ops::scaled_dot_product_attention(parts.select(0, 0), parts.select(0, 1), parts.select(0, 2));
  return proj->forward(a.transpose(1, 2).reshape({n, t, w}));
}

void EvaAttention::reset_parameters(Generator& gen, double std) {
  Module::reset_parameters(gen, std);
  NoGradGuard no_grad;
  q_bias_.zero_();
  v_bias_.zero_();
}

EvaMlp::EvaMlp(const EvaVitConfig& c, DType dtype) {
  fc1 = register_module("fc1", std::make_shared<Linear>(c.width, c.mlp_hidden, true, dtype));
  fc2 = register_module("fc2", std::make_shared<Linear>(c.mlp_hidden, c.width, true, dtype));
}

Tensor EvaMlp::forward(const Tensor& x) const { return fc2->forward(ops::gelu(fc1->forward(x))); }

EvaBlock::EvaBlock(const EvaVitConfig& c, DType dtype) {
  // Registration order = LAVIS's state-dict order.
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(c.width, c.layer_norm_eps, dtype));
  attn = register_module("attn", std::make_shared<EvaAttention>(c, dtype));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(c.width, c.layer_norm_eps, dtype));
  mlp = register_module("mlp", std::make_shared<EvaMlp>(c, dtype));
}

Tensor EvaBlock::forward(const Tensor& x) const {
  Tensor h = ops::add(x, attn->forward(norm1->forward(x)));
  return ops::add(h, mlp->forward(norm2->forward(h)));
}

EvaVisionTransformer::EvaVisionTransformer(const EvaVitConfig& c, DType dtype) : config_(c) {
  c.validate();
  cls_token_ = empty_parameter({1, 1, c.width}, dtype);
  pos_embed_ = empty_parameter({1, c.num_tokens(), c.width}, dtype);
  register_parameter("cls_token", &cls_token_);
  register_parameter("pos_embed", &pos_embed_);
  patch_embed = register_module("patch_embed", std::make_shared<EvaPatchEmbed>(c, dtype));
  blocks = register_module("blocks", std::make_shared<ModuleList<EvaBlock>>());
  for (int64_t i = 0; i < c.depth; ++i) blocks->push_back(std::make_shared<EvaBlock>(c, dtype));
  set_requires_grad(false);  // frozen (B-VLLM: vision_tower.requires_grad_(False))
}

Tensor EvaVisionTransformer::forward(const Tensor& pixels) const {
  NoGradGuard no_grad;  // B-VLLM's @torch.no_grad: features only, never a graph
  BVLLM_REQUIRE(is_floating(pixels.dtype()), "EVA ViT: pixels must be floating, got ", dtype_name(pixels.dtype()));
  Tensor x = patch_embed->forward(pixels.to(cls_token_.dtype()).to(cls_token_.device()));
  const int64_t n = x.size(0);
  x = ops::concat({cls_token_.expand({n, 1, config_.width}), x}, 1);
  x = ops::add(x, pos_embed_);
  for (const auto& block : *blocks) x = block->forward(x);
  return x;
}

void EvaVisionTransformer::reset_parameters(Generator& gen, double std) {
  Module::reset_parameters(gen, std);
  NoGradGuard no_grad;
  cls_token_.copy_(ops::normal(cls_token_.shape(), gen, 0.0, std, DType::F32));
  pos_embed_.copy_(config_.sincos_position_init ? sincos_pos_embed(config_.grid(), config_.width)
                                                : ops::normal(pos_embed_.shape(), gen, 0.0, std, DType::F32));
}

Tensor sincos_pos_embed(int64_t grid, int64_t width) {
  BVLLM_REQUIRE(width % 4 == 0, "sincos_pos_embed: width ", width, " is not a multiple of 4");
  // MAE: the first half of the channels encode the column (w), the second half the row (h); each
  // half is [sin(pos * omega_k), cos(pos * omega_k)] with omega_k = 1 / 10000^(k / (width / 4)).
  const int64_t quarter = width / 4;
  Tensor table = ops::zeros({1, 1 + grid * grid, width}, DType::F32);  // the CLS row stays zero
  float* out = table.data<float>();
  for (int64_t h = 0; h < grid; ++h)
    for (int64_t w = 0; w < grid; ++w) {
      float* row = out + (1 + h * grid + w) * width;
      for (int64_t k = 0; k < quarter; ++k) {
        const double omega = 1.0 / std::pow(10000.0, static_cast<double>(k) / static_cast<double>(quarter));
        row[k] = static_cast<float>(std::sin(static_cast<double>(w) * omega));
        row[quarter + k] = static_cast<float>(std::cos(static_cast<double>(w) * omega));
        row[2 * quarter + k] = static_cast<float>(std::sin(static_cast<double>(h) * omega));
        row[3 * quarter + k] = static_cast<float>(std::cos(static_cast<double>(h) * omega));
      }
    }
  return table;
}

// --- position embedding and loading ------------------------------------------------------------

Tensor interpolate_pos_embed(const Tensor& pos_embed, int64_t grid, int64_t extra) {
  BVLLM_REQUIRE(pos_embed.defined() && pos_embed.dim() == 3, "interpolate_pos_embed: pos_embed must be [1, T, C], got ",
                pos_embed.defined() ? shape_str(pos_embed.shape()) : "(undefined)");
  BVLLM_REQUIRE(is_floating(pos_embed.dtype()), "interpolate_pos_embed: pos_embed must be floating, got ",
                dtype_name(pos_embed.dtype()));
  BVLLM_REQUIRE(grid > 0 && extra >= 0, "interpolate_pos_embed: grid must be positive and extra >= 0, got ", grid,
                " and ", extra);
  const int64_t b = pos_embed.size(0), c = pos_embed.size(2), patches = pos_embed.size(1) - extra;
  const auto g0 = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(patches, 0)))));
  BVLLM_REQUIRE(patches > 0 && g0 * g0 == patches, "interpolate_pos_embed: pos_embed ", shape_str(pos_embed.shape()),
                " has ", patches, " positions after ", extra, " extra token(s), not a square grid");
  if (g0 == grid) return pos_embed;
  const Tensor pe = pos_embed.dtype() == DType::F64 ? pos_embed : pos_embed.to(DType::F32);
  // [B, g0^2, C] -> [B, C, g0, g0] -> bicubic -> [B, grid^2, C], row-major patch order throughout.
  Tensor tokens = pe.narrow(1, extra, patches).reshape({b, g0, g0, c}).permute({0, 3, 1, 2});
  tokens = ops::interpolate_bicubic(tokens, grid, grid).permute({0, 2, 3, 1}).reshape({b, grid * grid, c});
  return extra == 0 ? tokens : ops::concat({pe.narrow(1, 0, extra), tokens}, 1);
}

void load_eva_vit(EvaVisionTransformer& model, const NamedTensors& tensors, const std::string& source,
                  const std::string& prefix) {
  std::set<std::string> names;
  for (const auto& [name, t] : model.named_parameters()) names.insert(name);
  std::map<std::string, Tensor> wanted;
  std::vector<std::string> ignored;
  for (const auto& [name, t] : tensors) {
    const std::string key = name.starts_with(prefix) ? name.substr(prefix.size()) : std::string();
    if (key.empty() || !names.count(key)) {
      ignored.push_back(name);
      continue;
    }
    BVLLM_REQUIRE(wanted.emplace(key, t).second, source, ": tensor '", name, "' appears twice");
  }
  const std::string described = prefix.empty() ? source : str_cat(source, " (tensors under '", prefix, "')");

  // The checkpoint's grid (16 x 16 for LAVIS's 224 px file) resized to the model's; any other
  // mismatch (width, batch, a non-square count) is left to load_state_dict's shape error.
  const EvaVitConfig& c = model.config();
  auto pe = wanted.find("pos_embed");
  if (pe != wanted.end()) {
    const Tensor& t = pe->second;
    if (t.defined() && t.dim() == 3 && t.size(0) == 1 && t.size(2) == c.width && t.size(1) != c.num_tokens() &&
        t.size(1) > 1) {
      const int64_t patches = t.size(1) - 1;
      const auto g0 = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(patches))));
      BVLLM_REQUIRE(g0 * g0 == patches, "tensor '", prefix, "pos_embed' in ", source, " has shape ",
                    shape_str(t.shape()), ": its ", patches, " patch positions are not a square grid");
      LOG(INFO) << "load_eva_vit: " << source << ": pos_embed interpolated from " << g0 << "x" << g0 << " to "
                << c.grid() << "x" << c.grid();
      pe->second = interpolate_pos_embed(t, c.grid(), 1);
    }
  }
  model.load_state_dict(wanted, {.source = described});
  if (!ignored.empty()) {
    std::string shown;
    for (size_t i = 0; i < std::min<size_t>(ignored.size(), 4); ++i) shown += (i ? ", " : "") + ignored[i];
    LOG(INFO) << "load_eva_vit: " << source << ": ignored " << ignored.size()
              << " tensor(s) the model has no place for (as LAVIS's strict=False load), e.g. " << shown;
  }
}

}  // namespace bvllm::layers
