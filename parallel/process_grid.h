// The process grid: how the world's ranks divide into tensor-, data- and pipeline-parallel groups
// (../shared/DESIGN.md parallel/, research/distributed.md §2.1).
//
//   world = tp x dp x pp, tp fastest:   rank = tp_rank + dp_rank * tp + pp_rank * tp * dp
//
// so the tp ranks of a group are neighbours (one node, NVLink), dp groups stride by tp and pp
// groups by tp * dp. Example tp 2, dp 4, pp 2 (16 ranks): tp {0,1},{2,3},...; dp {0,2,4,6},
// {1,3,5,7},{8,10,12,14},{9,11,13,15}; pp {0,8},{1,9},...
//
// The gradient-statistics group is the set of ranks whose gradient shards together make the
// whole model once: with the distributed (ZeRO) optimizer every rank owns a distinct shard of a
// distinct model part, so it is the whole world (research/distributed.md §2.7).
#pragma once

#include <string>
#include <vector>

namespace bvllm::parallel {

struct GridCoords {
  int tp = 0, dp = 0, pp = 0;
  bool operator==(const GridCoords&) const = default;
};

class ProcessGrid {
 public:
  // A world of `world` ranks split into tp x pp model-parallel parts; dp = world / (tp * pp).
  // Throws bvllm::Error when a size is < 1, tp * pp does not divide world, or rank is out of range.
  ProcessGrid(int world, int rank, int tp, int pp);

  int world() const { return world_; }
  int rank() const { return rank_; }
  int tp() const { return tp_; }
  int dp() const { return dp_; }
  int pp() const { return pp_; }

  GridCoords coords() const { return coords_of(rank_); }
  GridCoords coords_of(int rank) const;
  int rank_of(const GridCoords& c) const;

  // The world ranks of this rank's groups, in group-rank order (this rank is at its coordinate).
  std::vector<int> tp_group() const;
  std::vector<int> dp_group() const;
  std::vector<int> pp_group() const;
  std::vector<int> grad_stats_group() const;

  // "tp 2 x dp 4 x pp 2 = 16 ranks; rank 5 = (tp 1, dp 2, pp 0)".
  std::string describe() const;

 private:
  int world_, rank_, tp_, dp_, pp_;
};

// The model sizes that constrain the layout.
struct ModelShape {
  int num_heads = 1;
  int num_kv_heads = 1;
  int num_layers = 1;
};

// Checks that the model can be split as the grid says: tp divides the attention and KV heads
// (research/distributed.md §0.2), each pipeline stage gets at least one layer. Throws bvllm::Error
// naming `source`, the field (parallel.tp / parallel.pp) and the numbers.
void validate_layout(const ProcessGrid& grid, const ModelShape& model, const std::string& source);

// The GPU of a rank: its index among the job's ranks on the same node, modulo the node's devices.
// local_rank is read from the launcher's environment (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID); -1 when none is set.
int launcher_local_rank();

}  // namespace bvllm::parallel
