# Stage 1 of B-VLLM at paper scale: pretraining the frame-selection side and the projectors on video
# and image captions (research/bvllm.md §5.2, scripts/vllava/pretrain.sh). LLM and EVA frozen.
#
#   mpirun -np 8 bvllm_train recipes/stage1.pb --set data.shards=/data/stage1_shards
#
# The paths under /models and /data are PLACEHOLDERS: point them at your copies (or use --set).
# proto-file: recipes/recipe.proto  proto-message: bvllm.recipes.Recipe

name: "bvllm_stage1"

model {
  llm_dir: "/models/Qwen2-7B-Instruct"               # placeholder: Hugging Face Qwen2-7B-Instruct
  vision { checkpoint: "/models/LAVIS/eva_vit_g.pth" }  # placeholder: LAVIS EVA ViT-g
  qformer {
    checkpoint: "/models/LAVIS/instruct_blip_vicuna7b_trimmed.pth"  # placeholder: InstructBLIP
    bert_vocab: "/models/bert-base-uncased/vocab.txt"               # placeholder
  }
  temporal_queries: 16       # L*: the code uses 16 of its 32 queries; the paper's supplement says 32
  spatial_queries: 32
  token_budget: 576
  frames_per_sample: 16      # paper stage 1: 16 frames
}

# The released code's net stage-1 trainable set (§5.2): the temporal Q-Former, its queries and LN,
# and the three projectors; the spatial Q-Former, its queries and LN stay frozen (InstructBLIP).
# (The code's mm_projector is unused by B-VLLM, and layers/bvllm has none.)
trainable {
  unfreeze: "model.vlm_att_encoder_temporal.*"
  unfreeze: "model.vlm_att_query_temporal"
  unfreeze: "model.vlm_att_ln_temporal.*"
  unfreeze: "model.vlm_att_projector_temporal.*"
  unfreeze: "model.vlm_att_projector_spatial.*"
  unfreeze: "model.vlm_att_val_projector_spatial.*"
}

optimizer { lr: 1e-3 weight_decay: 0 }               # AdamW, paper lr 1e-3, no weight decay
schedule { kind: COSINE warmup_ratio: 0.03 }

# The code: per-device 2 x accumulation 8 x 8 GPUs = 128 (the paper's value as well).
batch { micro_batch: 2 grad_accum: 8 global_batch: 128 }

precision { compute: BF16 }
parallel { tp: 1 pp: 1 zero_stage: 2 }               # the paper runs DeepSpeed ZeRO-2

data {
  shards: "/data/bvllm/stage1"                       # placeholder: bvllm_prep of valley_llavaimage.json
  stage: 1                                           # plain captions, no chat template (§5.2)
  max_length: 8192
  image_pad: false
}

checkpoint { every_steps: 800 }                      # the code saves every 800 steps
logging { every_steps: 1 }
seed: 42                                             # set_seed(42)
epochs: 1
