# Stage 2 of the main job: instruction tuning of the tiny B-VLLM on bvllm_synth's questions, as
# recipes/stage2.pb does at paper scale: every stage-1 weight loaded, LoRA on every LLM linear,
# both Q-Formers and the projectors trained, EVA frozen. The lr is higher than the paper's 1e-4
# (a tiny model, a few thousand steps).
#
#   build/bin/bvllm_prep --manifest runs/synth/stage2.json --media_root runs/synth --out runs/shards/stage2 --frame_size 96
#   build/bin/bvllm_train recipes/tiny_stage2.pb
#
# proto-file: recipes/recipe.proto  proto-message: bvllm.recipes.Recipe

name: "tiny_stage2"

model {
  llm {
    vocab_size: 512
    hidden_size: 128
    intermediate_size: 256
    num_layers: 2
    num_heads: 4
    num_kv_heads: 2
    tie_word_embeddings: true
  }
  tokenizer: "runs/synth/tokenizer.json"
  vision { image_size: 64 patch_size: 16 width: 64 depth: 1 num_heads: 4 sincos_position_init: true }
  qformer {
    hidden_size: 64
    num_layers: 2
    num_heads: 4
    intermediate_size: 128
    cross_attention_freq: 1
    bert_vocab: "runs/synth/bert_vocab.txt"
    init_std: 0.1
  }
  temporal_queries: 4
  spatial_queries: 8
  token_budget: 576
  frames_per_sample: 8
  chronological_order: true
}

# Every vlm_att_* module and the LoRA adapters, as recipes/stage2.pb, plus the token embeddings
# (tied to lm_head): stage 1's plain text never shows the tiny LLM ChatML's <|im_start|> and
# <|im_end|>, which Qwen2-Instruct's pretrained embeddings already know.
trainable {
  unfreeze: "model.vlm_att_*"
  unfreeze: "model.embed_tokens.*"
}

lora {
  rank: 16
  alpha: 32
  dropout: 0.05
  target_regex: "(q|k|v|o|gate|up|down)_proj$"
}

optimizer { lr: 1e-3 weight_decay: 0 }
schedule { kind: COSINE warmup_ratio: 0.03 }
batch { micro_batch: 8 grad_accum: 1 global_batch: 8 }
precision { compute: F32 }

data {
  shards: "runs/shards/stage2"
  stage: 2
  max_length: 256
  image_pad: true
}

checkpoint {
  every_steps: 100
  init_from: "runs/tiny_stage1/checkpoints"   # every stage-1 weight
}
logging { every_steps: 50 }
seed: 42
epochs: 3
