// Shapes, strides and the dimension arithmetic shared by every op.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bvllm {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"
// Maps a possibly negative dim into [0, rank); throws naming `op` when out of range.
int normalize_dim(int64_t dim, int64_t rank, const char* op);
// A contiguous tensor seen as [outer, size, inner] around dim `dim`: the layout reductions and
// indexing kernels walk.
struct DimSplit {
  int64_t outer = 1, size = 1, inner = 1;
};
DimSplit split_at(const Shape& shape, int dim);
// NumPy broadcasting of two shapes; throws naming `op` when they are incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace bvllm
