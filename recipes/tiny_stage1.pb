# Stage 1 of the main job: a tiny B-VLLM learns to describe the synthetic videos of bvllm_synth on
# the CPU in minutes (README "The main job"; docs/recipes.md). Same structure as recipes/stage1.pb,
# small sizes, and one deliberate difference: the tiny LLM and Q-Formers start from random weights
# (there are no pretrained tiny ones to download), so this stage trains them as well as the
# frame-selection side and the projectors. The paper's stage 1 keeps its pretrained Qwen2 and the
# spatial Q-Former frozen.
#
#   build/bin/bvllm_synth --out runs/synth
#   build/bin/bvllm_prep --manifest runs/synth/stage1.json --media_root runs/synth --out runs/shards/stage1 --frame_size 96
#   build/bin/bvllm_train recipes/tiny_stage1.pb
#
# proto-file: recipes/recipe.proto  proto-message: bvllm.recipes.Recipe

name: "tiny_stage1"

model {
  # A small Qwen2 over bvllm_synth's small byte-level vocabulary (runs/synth/tokenizer.json).
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
  # A small EVA (random, frozen, as the real one is frozen): 64 px frames, 4x4 patches of 16 px.
  # Its position table is MAE's 2-D sin-cos instead of a random one: a random EVA has no trained
  # sense of where a patch is, and with a random table "where" (position, motion) is near
  # invisible to the Q-Formers (docs/main_job.md). The Q-Formers start wider (init_std 0.1, BERT's
  # 0.02) so their cross-attention is not uniform from the start.
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
  temporal_queries: 4        # L*: 4 of the 8 frames
  spatial_queries: 8         # tokens per kept frame
  token_budget: 576
  frames_per_sample: 8
  chronological_order: true  # motion and event order need the frames in time order
}

# Everything but EVA: the tiny model has no pretrained Q-Formers or LLM to keep (recipes/stage1.pb
# trains only the temporal side and the projectors of pretrained parts).
trainable {
  unfreeze: "model.vlm_att_*"
  unfreeze: "model.embed_tokens.*"
  unfreeze: "model.layers.*"
  unfreeze: "model.norm.*"
}

optimizer { lr: 1e-3 weight_decay: 0 }
schedule { kind: COSINE warmup_ratio: 0.03 }
batch { micro_batch: 8 grad_accum: 1 global_batch: 8 }
precision { compute: F32 }

data {
  shards: "runs/shards/stage1"
  stage: 1
  max_length: 256
  image_pad: false
}

checkpoint { every_steps: 100 }
logging { every_steps: 50 }
seed: 42
epochs: 2.5
