// B-VLLM's starting weights from the LAVIS files the released training loads
// (../shared/research/bvllm.md §4, §12.6):
//
//   eva_vit_g.pth                       -> model.vision_tower.vision_tower.*   (layers/eva_vit.h's
//                                          load_eva_vit: pos_embed interpolated 16x16 -> 24x24,
//                                          the file's 40th block ignored as strict=False does)
//   instruct_blip_vicuna7b_trimmed.pth  -> {'model': {...}}:
//       Qformer.bert.*  -> model.vlm_att_encoder_temporal.bert.* and model.vlm_att_encoder_spatial.bert.*
//       query_tokens    -> model.vlm_att_query_temporal and model.vlm_att_query_spatial
//       ln_vision.*     -> model.vlm_att_ln_temporal.* and model.vlm_att_ln_spatial.*
//   (the Q-Former's position_ids buffer and InstructBLIP's own LLM projection are not used).
//
// Both files are PyTorch zip checkpoints (runtime/io/pth.h). Errors name the file and the tensor;
// a failed load changes nothing.
#pragma once

#include <string>

#include "layers/bvllm.h"

namespace bvllm::layers {

void load_lavis_vision_tower(BvllmForCausalLM& model, const std::string& eva_pth);
void load_instructblip_qformers(BvllmForCausalLM& model, const std::string& instructblip_pth);

}  // namespace bvllm::layers
