#include "layers/bvllm_checkpoint.h"

#include <glog/logging.h>

#include <map>

#include "runtime/autograd.h"
#include "runtime/error.h"
#include "runtime/io/pth.h"

namespace bvllm::layers {

void load_lavis_vision_tower(BvllmForCausalLM& model, const std::string& eva_pth) {
  NamedTensors tensors = load_pth(eva_pth);
  load_eva_vit(*model.bvllm().vision_tower->vision_tower, tensors, eva_pth);
}

void load_instructblip_qformers(BvllmForCausalLM& model, const std::string& instructblip_pth) {
  const NamedTensors tensors = load_pth(instructblip_pth);
  // LAVIS checkpoints nest the state dict under 'model'; accept a bare state dict too.
  std::string root;
  for (const auto& [name, t] : tensors) {
    if (name == "model.query_tokens") root = "model.";
  }
  const std::string qformer_prefix = root + "Qformer.";
  std::map<std::string, Tensor> shared;
  bool has_qformer = false;
  for (const auto& [name, t] : tensors) {
    has_qformer = has_qformer || name.rfind(qformer_prefix + "bert.", 0) == 0;
    if (name == root + "query_tokens" || name.rfind(root + "ln_vision.", 0) == 0) shared[name.substr(root.size())] = t;
  }
  BVLLM_REQUIRE(has_qformer, instructblip_pth, ": no '", qformer_prefix,
                "bert.*' tensors: not an InstructBLIP / BLIP-2 checkpoint");
  for (const char* name : {"query_tokens", "ln_vision.weight", "ln_vision.bias"}) {
    BVLLM_REQUIRE(shared.count(name), instructblip_pth, ": tensor '", root, name, "' is missing");
  }

  // Validate everything before changing anything: the query and norm shapes here, the Q-Former
  // by its first load (load_qformer checks every tensor before it writes one).
  BvllmModel& m = model.bvllm();
  const Tensor& queries = shared.at("query_tokens");
  BVLLM_REQUIRE(queries.shape() == m.vlm_att_query_temporal.shape(), instructblip_pth, ": tensor '", root,
                "query_tokens' has shape ", shape_str(queries.shape()), ", the model's query tokens are ",
                shape_str(m.vlm_att_query_temporal.shape()), " (num_query_tokens, Q-Former hidden size)");
  for (const char* name : {"ln_vision.weight", "ln_vision.bias"}) {
    BVLLM_REQUIRE(shared.at(name).shape() == m.vlm_att_ln_temporal->weight().shape(), instructblip_pth, ": tensor '",
                  root, name, "' has shape ", shape_str(shared.at(name).shape()), ", expected ",
                  shape_str(m.vlm_att_ln_temporal->weight().shape()), " (the vision width)");
  }
  load_qformer(*m.vlm_att_encoder_temporal, tensors, qformer_prefix, instructblip_pth);
  load_qformer(*m.vlm_att_encoder_spatial, tensors, qformer_prefix, instructblip_pth);
  std::map<std::string, Tensor> ln = {{"weight", shared.at("ln_vision.weight")}, {"bias", shared.at("ln_vision.bias")}};
  m.vlm_att_ln_temporal->load_state_dict(ln, {.source = instructblip_pth});
  m.vlm_att_ln_spatial->load_state_dict(ln, {.source = instructblip_pth});
  NoGradGuard no_grad;
  m.vlm_att_query_temporal.copy_(queries);
  m.vlm_att_query_spatial.copy_(queries);
  LOG(INFO) << instructblip_pth << ": loaded the Q-Former into both encoders, query_tokens and ln_vision";
}

}  // namespace bvllm::layers
