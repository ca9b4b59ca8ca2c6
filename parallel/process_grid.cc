#include "parallel/process_grid.h"

#include <cstdlib>
#include <numeric>

#include "runtime/error.h"

namespace bvllm::parallel {

ProcessGrid::ProcessGrid(int world, int rank, int tp, int pp) : world_(world), rank_(rank), tp_(tp), dp_(0), pp_(pp) {
  BVLLM_REQUIRE(world >= 1, "process grid: world size must be >= 1, got ", world);
  BVLLM_REQUIRE(tp >= 1, "process grid: parallel.tp must be >= 1, got ", tp);
  BVLLM_REQUIRE(pp >= 1, "process grid: parallel.pp must be >= 1, got ", pp);
  BVLLM_REQUIRE(world % (tp * pp) == 0, "process grid: ", world, " ranks cannot be split into tp ", tp, " x pp ", pp,
                " (", tp * pp, " does not divide ", world, "); launch a multiple of tp * pp ranks");
  BVLLM_REQUIRE(rank >= 0 && rank < world, "process grid: rank ", rank, " is outside the world of ", world);
  dp_ = world / (tp * pp);
}

GridCoords ProcessGrid::coords_of(int rank) const {
  BVLLM_REQUIRE(rank >= 0 && rank < world_, "process grid: rank ", rank, " is outside the world of ", world_);
  return GridCoords{.tp = rank % tp_, .dp = (rank / tp_) % dp_, .pp = rank / (tp_ * dp_)};
}

int ProcessGrid::rank_of(const GridCoords& c) const {
  BVLLM_REQUIRE(c.tp >= 0 && c.tp < tp_ && c.dp >= 0 && c.dp < dp_ && c.pp >= 0 && c.pp < pp_,
                "process grid: coordinates (tp ", c.tp, ", dp ", c.dp, ", pp ", c.pp, ") are outside ", describe());
  return c.tp + c.dp * tp_ + c.pp * tp_ * dp_;
}

std::vector<int> ProcessGrid::tp_group() const {
  std::vector<int> members;
  GridCoords c = coords();
  for (c.tp = 0; c.tp < tp_; ++c.tp) members.push_back(rank_of(c));
  return members;
}

std::vector<int> ProcessGrid::dp_group() const {
  std::vector<int> members;
  GridCoords c = coords();
  for (c.dp = 0; c.dp < dp_; ++c.dp) members.push_back(rank_of(c));
  return members;
}

std::vector<int> ProcessGrid::pp_group() const {
  std::vector<int> members;
  GridCoords c = coords();
  for (c.pp = 0; c.pp < pp_; ++c.pp) members.push_back(rank_of(c));
  return members;
}

std::vector<int> ProcessGrid::grad_stats_group() const {
  std::vector<int> members(static_cast<size_t>(world_));
  std::iota(members.begin(), members.end(), 0);
  return members;
}

std::string ProcessGrid::describe() const {
  const GridCoords c = coords_of(rank_);
  return str_cat("tp ", tp_, " x dp ", dp_, " x pp ", pp_, " = ", world_, " ranks; rank ", rank_, " = (tp ", c.tp,
                 ", dp ", c.dp, ", pp ", c.pp, ")");
}

void validate_layout(const ProcessGrid& grid, const ModelShape& model, const std::string& source) {
  BVLLM_REQUIRE(model.num_heads % grid.tp() == 0, source, ": parallel.tp: ", grid.tp(), " does not divide the ",
                model.num_heads, " attention heads of the LLM");
  BVLLM_REQUIRE(model.num_kv_heads % grid.tp() == 0, source, ": parallel.tp: ", grid.tp(), " does not divide the ",
                model.num_kv_heads, " key/value heads of the LLM");
  BVLLM_REQUIRE(model.num_layers >= grid.pp(), source, ": parallel.pp: ", grid.pp(), " stages for ", model.num_layers,
                " LLM layers (each stage needs at least one)");
}

int launcher_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* value = std::getenv(name); value != nullptr && *value != '\0') return std::atoi(value);
  }
  return -1;
}

}  // namespace bvllm::parallel
