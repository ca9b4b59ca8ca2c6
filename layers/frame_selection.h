// Text-conditioned frame selection, as the released B-VLLM computes it (../shared/research/bvllm.md
// §2.4; bvlm_arch.py L402-461):
//
//   f   = feature(V)                  [T, Cv]   the frames' [CLS] tokens (or a pooling of the patches)
//   A   = projector_temporal(H_t)     [K, Cv]   H_t: the temporal Q-Former's K query states
//   S   = A f^T / sqrt(Cv)            [K, T]
//   W   = softmax((S + G) / tau)      [K, T]    over frames; G ~ Gumbel(0, 1); soft, no hard sample
//   F   = W @ P                       [K, P, Cv] P = LN_t(patch tokens): each row mixes all frames
//
// The Q-Former has no temporal position encoding, so the K rows come out in query order, not in
// time order; `chronological_order` gives the permutation that sorts them by their expected frame
// index sum_t W[k, t] t (the paper names the lost order as a limitation).
#pragma once

#include <string>

#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace bvllm::layers {

// What summarizes a frame for selection. Cls is the released model; the pooled variants are the
// paper's ablation (seed table 3) over the frame's raw patch tokens.
enum class SelectionFeature { Cls, MeanPool, MaxPool };
SelectionFeature parse_selection_feature(const std::string& name);  // "cls", "mean", "max"
const char* selection_feature_name(SelectionFeature feature);

// vision [T, 1 + P, Cv] (EVA output, [CLS] first) -> [T, Cv].
Tensor selection_feature(const Tensor& vision, SelectionFeature feature);

// S = a f^T / sqrt(Cv): a [K, Cv], features [T, Cv] -> [K, T].
Tensor selection_scores(const Tensor& a, const Tensor& features);

// softmax((scores + noise) / tau) over the last dim; an undefined `noise` gives the noise-free
// softmax(scores / tau).
Tensor gumbel_softmax(const Tensor& scores, double tau, const Tensor& noise);

// Standard Gumbel noise shaped like `scores`, drawn from `gen` (Philox: the same values on every
// device and parallel layout for the same seed and offset).
Tensor gumbel_noise_like(const Tensor& scores, Generator& gen);

// weights [K, T], patches [T, P, C] -> [K, P, C]: row k is sum_t weights[k, t] patches[t].
Tensor mix_frames(const Tensor& weights, const Tensor& patches);

// The row order that sorts weights [K, T] by expected frame index (stable: ties keep query order).
std::vector<int64_t> chronological_order(const Tensor& weights);

}  // namespace bvllm::layers
