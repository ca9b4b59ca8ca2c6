// Tiny model configurations shared by the tests; each matches its PyTorch reference in
// tests/reference/ (bvllm_reference.py: EVA_TINY, QFORMER_TINY, HEAD_TINY, QWEN2_TINY).
#pragma once

#include "layers/bvllm.h"

namespace bvllm::testing {

layers::BvllmConfig tiny_bvllm_config();

}  // namespace bvllm::testing
