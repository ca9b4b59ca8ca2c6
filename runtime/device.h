// Where a tensor's bytes live.
#pragma once

#include <string>

namespace bvllm {

struct Device {
  // Meta: shapes and dtypes without bytes (a model built to count its parameters; any read of
  // its data is refused).
  enum class Kind : uint8_t { CPU, CUDA, Meta };
  Kind kind = Kind::CPU;
  int index = 0;

  static Device cpu() { return {Kind::CPU, 0}; }
  static Device cuda(int index = 0) { return {Kind::CUDA, index}; }
  static Device meta() { return {Kind::Meta, 0}; }
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  bool is_meta() const { return kind == Kind::Meta; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : is_meta() ? "meta" : "cuda:" + std::to_string(index); }
};

}  // namespace bvllm
