// Placeholder until tools/train/trainer.cc lands.
namespace bvllm::train {}
