// Tiny model configurations shared by the tests; each matches its PyTorch reference in
// tests/reference/bvllm_reference.py (EVA_TINY, QFORMER_TINY, HEAD_TINY, QWEN2_TINY).
#pragma once

#include "layers/bvllm.h"

namespace bvllm::testing {

// 42 px, patch 14 (grid 3: 9 patches + CLS), width 24, depth 2, 4 heads, MLP 104.
layers::EvaVitConfig tiny_eva_config();
// Vocab 40, hidden 32, 4 layers (cross-attention on 0 and 2), 4 heads, FFN 48, 24 positions,
// encoder width 24; dropout off as in the fixtures.
layers::QFormerConfig tiny_qformer_config();
// Those two, 6 query tokens (4 temporal, 6 spatial) and a Qwen2 of vocab 64, hidden 48, 2 layers,
// 4 heads / 2 kv heads of 12, FFN 96, untied.
layers::BvllmConfig tiny_bvllm_config();

}  // namespace bvllm::testing
