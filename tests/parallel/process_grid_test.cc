#include "parallel/process_grid.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <vector>

#include "runtime/error.h"
#include "tests/support/messages.h"

namespace bvllm::parallel {
namespace {

using Groups = std::set<std::vector<int>>;

// Research/distributed.md §2.1's worked example (Megatron's formula), tp 2, dp 4, pp 2.
TEST(ProcessGrid, MatchesTheWorkedExample) {
  Groups tp, dp, pp;
  for (int r = 0; r < 16; ++r) {
    const ProcessGrid g(16, r, 2, 2);
    EXPECT_EQ(g.dp(), 4);
    tp.insert(g.tp_group());
    dp.insert(g.dp_group());
    pp.insert(g.pp_group());
  }
  EXPECT_EQ(tp, (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(dp, (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}));
  EXPECT_EQ(pp, (Groups{{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}}));
}

// Every layout of 12 ranks: the groups of each kind partition the world, a rank sits in its
// groups at its own coordinate, and coordinates round-trip.
TEST(ProcessGrid, GroupsPartitionTheWorld) {
  for (const auto& [tp, pp] : std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 3}, {2, 3}, {3, 2}, {12, 1}}) {
    SCOPED_TRACE(::testing::Message() << "tp " << tp << " pp " << pp);
    std::vector<int> seen_tp(12, 0), seen_dp(12, 0), seen_pp(12, 0);
    for (int r = 0; r < 12; ++r) {
      const ProcessGrid g(12, r, tp, pp);
      EXPECT_EQ(g.tp() * g.dp() * g.pp(), 12);
      const GridCoords c = g.coords();
      EXPECT_EQ(g.rank_of(c), r);
      EXPECT_EQ(c.tp + c.dp * tp + c.pp * tp * g.dp(), r);
      EXPECT_EQ(g.tp_group().at(static_cast<size_t>(c.tp)), r);
      EXPECT_EQ(g.dp_group().at(static_cast<size_t>(c.dp)), r);
      EXPECT_EQ(g.pp_group().at(static_cast<size_t>(c.pp)), r);
      EXPECT_EQ(g.grad_stats_group().size(), 12u);
      // Counted once per group member that lists r: each rank appears in tp (resp. dp, pp) groups
      // as often as the group has members, i.e. in exactly one distinct group.
      for (int m : g.tp_group()) seen_tp[static_cast<size_t>(m)] += 1;
      for (int m : g.dp_group()) seen_dp[static_cast<size_t>(m)] += 1;
      for (int m : g.pp_group()) seen_pp[static_cast<size_t>(m)] += 1;
      // Members of one group share the other coordinates.
      for (int m : g.dp_group()) {
        EXPECT_EQ(g.coords_of(m).tp, c.tp);
        EXPECT_EQ(g.coords_of(m).pp, c.pp);
      }
    }
    for (int r = 0; r < 12; ++r) {
      EXPECT_EQ(seen_tp[static_cast<size_t>(r)], tp);
      EXPECT_EQ(seen_dp[static_cast<size_t>(r)], 12 / (tp * pp));
      EXPECT_EQ(seen_pp[static_cast<size_t>(r)], pp);
    }
  }
}

TEST(ProcessGrid, RefusesLayoutsThatDoNotFit) {
  try {
    ProcessGrid(6, 0, 4, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "4 does not divide 6");
  }
  EXPECT_THROW(ProcessGrid(4, 4, 1, 1), Error);
  EXPECT_THROW(ProcessGrid(4, 0, 0, 1), Error);
  EXPECT_THROW(ProcessGrid(0, 0, 1, 1), Error);
}

TEST(ProcessGrid, ValidatesTheLayoutAgainstTheModel) {
  // Qwen2-7B: 28 heads, 4 KV heads, 28 layers (research/distributed.md §0.2: tp 8 is illegal).
  const ModelShape qwen7b{.num_heads = 28, .num_kv_heads = 4, .num_layers = 28};
  validate_layout(ProcessGrid(16, 0, 4, 2), qwen7b, "stage2.pb");
  try {
    validate_layout(ProcessGrid(16, 0, 8, 1), qwen7b, "stage2.pb");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "stage2.pb: parallel.tp: 8 does not divide the 28 attention heads");
  }
  try {
    validate_layout(ProcessGrid(4, 0, 1, 4), {.num_heads = 4, .num_kv_heads = 2, .num_layers = 2}, "tiny.pb");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tiny.pb: parallel.pp: 4 stages for 2 LLM layers");
  }
}

TEST(ProcessGrid, ReadsTheLocalRankFromTheLauncher) {
  unsetenv("SLURM_LOCALID");
  unsetenv("MPI_LOCALRANKID");
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  EXPECT_EQ(launcher_local_rank(), 3);
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  setenv("SLURM_LOCALID", "5", 1);
  EXPECT_EQ(launcher_local_rank(), 5);
  unsetenv("SLURM_LOCALID");
  EXPECT_EQ(launcher_local_rank(), -1);
}

}  // namespace
}  // namespace bvllm::parallel
