#include "layers/embedding.h"

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, DType dtype) {
  BVLLM_REQUIRE(num_embeddings > 0 && embedding_dim > 0, "Embedding: sizes must be positive, got ", num_embeddings,
                " x ", embedding_dim);
  weight_ = empty_parameter({num_embeddings, embedding_dim}, dtype);
  register_parameter("weight", &weight_);
}

Tensor Embedding::forward(const Tensor& ids) const { return ops::embedding(weight_, ids); }

void Embedding::reset_parameters(Generator& gen, double std) {
  NoGradGuard no_grad;
  weight_.copy_(ops::normal(weight_.shape(), gen, 0.0, std, DType::F32));
}

}  // namespace bvllm::layers
