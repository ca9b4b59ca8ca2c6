// Embedding (torch.nn.Embedding): weight [vocab, hidden], row ids[i] for each id.
#pragma once

#include "layers/module.h"

namespace bvllm::layers {

class Embedding : public Module {
 public:
  // The weight is allocated, not initialized: load it or call reset_parameters.
  Embedding(int64_t num_embeddings, int64_t embedding_dim, DType dtype = DType::F32);

  Tensor forward(const Tensor& ids) const;  // ids i64/i32 [...] -> [..., hidden]

  int64_t num_embeddings() const { return weight_.size(0); }
  int64_t embedding_dim() const { return weight_.size(1); }
  Tensor& weight() { return weight_; }
  const Tensor& weight() const { return weight_; }

  void reset_parameters(Generator& gen, double std) override;  // normal(0, std)

 private:
  Tensor weight_;
};

}  // namespace bvllm::layers
