// EVA ViT-g/14, B-VLLM's frozen vision encoder, as LAVIS eva_vit.py builds it
// (../shared/research/bvllm.md §2.2, §3, §4):
//
//   x = concat[cls_token ; patch_embed(pixels)] + pos_embed        [N, 1 + g^2, W]
//   per block:  x = x + attn.proj(attention(norm1(x)))             pre-LN, bidirectional
//               x = x + mlp.fc2(gelu(mlp.fc1(norm2(x))))            exact GELU
//   output = x after the last block (no final norm, no head: the "penultimate-layer features").
//
// patch_embed is a p x p convolution of stride p (weight [W, 3, p, p]); the attention's qkv has
// biases on q and v only (k's is zero), scale head_dim^-0.5; no layer scale, no relative position
// bias. Parameter names are LAVIS's (cls_token, pos_embed, patch_embed.proj.weight,
// blocks.N.attn.qkv.weight, blocks.N.attn.q_bias, ...), so eva_vit_g.pth loads name for name.
//
// The encoder is frozen, as B-VLLM uses it (requires_grad_(False), @torch.no_grad): every
// parameter has requires_grad false from construction, and forward() runs under NoGradGuard, so
// it records no autograd graph whatever the parameters' flags (its output never requires grad).
#pragma once

#include <memory>
#include <string>

#include "layers/layer_norm.h"
#include "layers/linear.h"
#include "layers/module.h"

namespace bvllm::layers {

struct EvaVitConfig {
  int64_t image_size = 336;
  int64_t patch_size = 14;
  int64_t width = 1408;
  int64_t depth = 39;
  int64_t heads = 16;
  int64_t mlp_hidden = 6144;  // LAVIS: int(width * mlp_ratio), mlp_ratio 4.3637
  double layer_norm_eps = 1e-6;
  // reset_parameters draws pos_embed as MAE's fixed 2-D sin-cos table (He et al. 2021,
  // get_2d_sincos_pos_embed) instead of N(0, std): for a random, frozen tower standing in for a
  // pretrained one (the tiny recipes), whose N(0, 0.02) positions are ~6% of a patch's features and
  // leave "where" nearly invisible to the Q-Formers. Loading weights replaces it either way.
  bool sincos_position_init = false;

  int64_t grid() const { return image_size / patch_size; }    // patches per side
  int64_t num_tokens() const { return 1 + grid() * grid(); }  // CLS + patches
  int64_t head_dim() const { return width / heads; }
  // int(width * 4.3637), as LAVIS computes the MLP width (1408 -> 6144, 24 -> 104).
  static int64_t mlp_hidden_for(int64_t width);

  // create_eva_vit_g as B-VLLM calls it: 336 px, 24 x 24 patches + CLS = 577 tokens of 1408.
  static EvaVitConfig eva_vit_g();
  // Throws bvllm::Error naming `origin` and the field when a size is not positive or sizes
  // disagree (image not a multiple of the patch, width not a multiple of heads).
  void validate(const std::string& origin = "EvaVitConfig") const;
};

// The p x p, stride-p convolution of PatchEmbed (LAVIS names it patch_embed.proj), computed as an
// unfold of the pixels into [N, g^2, 3 p p] rows in (channel, row, column) order times the weight
// viewed [W, 3 p p], plus the bias. Tokens are in row-major patch order, as conv(x).flatten(2).
class EvaPatchConv : public Module {
 public:
  EvaPatchConv(int64_t patch_size, int64_t width, DType dtype = DType::F32);
  // pixels [N, 3, H, W] with H and W multiples of p -> [N, (H/p)(W/p), width].
  Tensor forward(const Tensor& pixels) const;
  const Tensor& weight() const { return weight_; }             // [width, 3, p, p]
  const Tensor& bias() const { return bias_; }                 // [width]
  void reset_parameters(Generator& gen, double std) override;  // weight normal(0, std), bias zero

 private:
  int64_t patch_;
  Tensor weight_, bias_;
};

class EvaPatchEmbed : public Module {
 public:
  EvaPatchEmbed(const EvaVitConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& pixels) const;  // checks the image size, then proj
  std::shared_ptr<EvaPatchConv> proj;

 private:
  int64_t image_size_;
};

class EvaAttention : public Module {
 public:
  EvaAttention(const EvaVitConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;  // [N, T, W] -> [N, T, W]
  // q_bias and v_bias zero (LAVIS), the Linears normal(0, std).
  void reset_parameters(Generator& gen, double std) override;

  const Tensor& q_bias() const { return q_bias_; }
  const Tensor& v_bias() const { return v_bias_; }
  std::shared_ptr<Linear> qkv;  // [3W, W], no bias of its own
  std::shared_ptr<Linear> proj;

 private:
  int64_t heads_;
  Tensor q_bias_, v_bias_;
};

class EvaMlp : public Module {
 public:
  EvaMlp(const EvaVitConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;  // fc2(gelu(fc1(x)))
  std::shared_ptr<Linear> fc1, fc2;
};

class EvaBlock : public Module {
 public:
  EvaBlock(const EvaVitConfig& config, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<LayerNorm> norm1;
  std::shared_ptr<EvaAttention> attn;
  std::shared_ptr<LayerNorm> norm2;
  std::shared_ptr<EvaMlp> mlp;
};

// Parameters are allocated, not initialized: load eva_vit_g.pth with load_eva_vit, or call
// reset_parameters (tests; EVA is never trained here).
class EvaVisionTransformer : public Module {
 public:
  EvaVisionTransformer(const EvaVitConfig& config, DType dtype = DType::F32);

  // pixels [N, 3, image_size, image_size], normalized as the image processor leaves them, in any
  // floating dtype (cast to the parameters' dtype, as B-VLLM's images.to(dtype)) ->
  // [N, 1 + grid^2, width] in the parameters' dtype, CLS first. Under NoGradGuard (frozen).
  Tensor forward(const Tensor& pixels) const;

  const EvaVitConfig& config() const { return config_; }
  const Tensor& cls_token() const { return cls_token_; }  // [1, 1, W]
  const Tensor& pos_embed() const { return pos_embed_; }  // [1, 1 + g^2, W]

  // Normal(0, std) for cls_token, pos_embed, the patch convolution and the Linears, zero biases
  // (q_bias and v_bias included), LayerNorms one/zero. LAVIS draws truncated normals and rescales
  // proj/fc2 per depth; this init only serves tests, real weights come from eva_vit_g.pth.
  void reset_parameters(Generator& gen, double std) override;

  std::shared_ptr<EvaPatchEmbed> patch_embed;
  std::shared_ptr<ModuleList<EvaBlock>> blocks;

 private:
  EvaVitConfig config_;
  Tensor cls_token_, pos_embed_;
};

// LAVIS interpolate_pos_embed: pos_embed [1, extra + g0^2, C] (extra = CLS and any other
// non-patch tokens, kept unchanged) -> [1, extra + grid^2, C], the g0 x g0 patch grid resized
// bicubically (A = -0.75, align_corners=False) to grid x grid. Computed in f32 as LAVIS does
// (.float()); f64 stays f64, bf16/f16 come back as f32. Returned as is when g0 == grid. Throws
// bvllm::Error when the token count minus `extra` is not a square.
Tensor interpolate_pos_embed(const Tensor& pos_embed, int64_t grid, int64_t extra = 1);

// MAE's fixed 2-D sin-cos position table [1, 1 + grid^2, width] (CLS row zero; width a multiple
// of 4): EvaVitConfig::sincos_position_init.
Tensor sincos_pos_embed(int64_t grid, int64_t width);

// Loads LAVIS EVA weights (eva_vit_g.pth as read by the .pth reader, any floating dtype,
// converted to the model's) into `model`, as B-VLLM's load: the tensors named `prefix` + LAVIS
// name are taken; pos_embed is interpolated to the model's grid when the checkpoint's differs
// (the LAVIS file is 16 x 16, for 224 px); tensors the model has no place for (blocks beyond
// its depth, norm/head keys, other prefixes) are ignored as LAVIS's strict=False load ignores
// them, and counted in a glog INFO line. Missing or mis-shaped tensors throw one bvllm::Error
// that names each tensor and `source`; nothing changes then.
void load_eva_vit(EvaVisionTransformer& model, const NamedTensors& tensors, const std::string& source,
                  const std::string& prefix = "");

}  // namespace bvllm::layers
