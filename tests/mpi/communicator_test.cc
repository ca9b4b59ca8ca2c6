// MpiCommunicator under mpirun with 2, 3 and 4 ranks (ctest: communicator_test_np2, _np3, _np4),
// on the world and on two splits of it: "parity" (even and odd world ranks; groups of one with 2
// ranks, of one and two with 3) and "reversed" (every rank, ranked in reverse, so group ranks and
// world ranks differ). Integer data; every expected value is computed here from the pattern each
// member wrote, element by element (sums of u8 wrap modulo 256 as C's do):
// - all_reduce for every ReduceOp and every reduction dtype, at 1, 7, 1001 and ~1 M elements;
//   also split into MPI calls of 7 and 1000 elements (max_chunk_elements), which no rank count
//   divides, and of an empty tensor;
// - reduce_scatter and all_gather (f32, i64, u8, bf16 moved as bits; in place), whole and in
//   pieces, and their refusal of lengths that the group's size does not divide;
// - broadcast from every root, whole and in pieces;
// - send/recv around a ring and between pairs, odd sizes, whole and in pieces, and a message
//   shorter than the receiving tensor;
// - several operations in flight at once, waited in reverse order;
// - the timeout: members that skip a collective are named, by world rank, in the CommError of
//   those that entered it; the skippers then join late and the waiting ranks' Works complete; the
//   same for a recv whose sender is late;
// - usage errors (dtype, contiguity, root, peer, split lists) and BVLLM_COMM_TIMEOUT_S.
// Every case waits for every operation it started, then the fixture's barrier lines the ranks up.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "tests/support/messages.h"

namespace bvllm::parallel {
namespace {

using testing::error_of;
using testing::has;

// Long enough for 4 ranks on 2 shared cores, short enough that a test that desynchronizes the
// ranks fails within ctest's 300 s instead of hanging.
constexpr std::chrono::milliseconds kTestTimeout = std::chrono::seconds(60);

const std::vector<int64_t> kSizes = {1, 7, 1001, (int64_t{1} << 20) + 3};
const std::vector<ReduceOp> kOps = {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min};
const std::vector<DType> kReduceDtypes = {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8};
const std::vector<DType> kMoveDtypes = {DType::F32, DType::I64, DType::U8, DType::BF16};

const char* op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : op == ReduceOp::Max ? "max" : "min"; }

// An integer as the dtype stores it: u8 modulo 256, bf16 as a 16-bit pattern (moved, never reduced).
int64_t as_dtype(DType dtype, int64_t v) {
  if (dtype == DType::U8) return ((v % 256) + 256) % 256;
  if (dtype == DType::BF16) return ((v % 65536) + 65536) % 65536;
  return v;
}

// What member `r` writes at element `i`: small integers, exact in f32 sums; non-negative for u8;
// not monotonic in r, so max and min differ by element.
int64_t pattern(DType dtype, int64_t r, int64_t i, int64_t salt) {
  const int64_t k = (i * 7 + r * 13 + salt * 5) % 23;
  if (dtype == DType::U8) return k * 11;
  if (dtype == DType::BF16) return k * 2741 + r;
  return k - 11;
}

void put(const Tensor& t, int64_t i, int64_t v) {
  switch (t.dtype()) {
    case DType::F32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::F64: t.data<double>()[i] = static_cast<double>(v); break;
    case DType::I32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::I64: t.data<int64_t>()[i] = v; break;
    case DType::U8: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
    case DType::BF16: static_cast<uint16_t*>(t.raw_data())[i] = static_cast<uint16_t>(v); break;
    default: FAIL() << "no test pattern for " << dtype_name(t.dtype());
  }
}

int64_t get(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return static_cast<int64_t>(t.data<float>()[i]);
    case DType::F64: return static_cast<int64_t>(t.data<double>()[i]);
    case DType::I32: return t.data<int32_t>()[i];
    case DType::I64: return t.data<int64_t>()[i];
    case DType::U8: return t.data<uint8_t>()[i];
    case DType::BF16: return static_cast<const uint16_t*>(t.raw_data())[i];
    default: return -999999;
  }
}

Tensor filled(DType dtype, int64_t n, const std::function<int64_t(int64_t)>& value) {
  Tensor t = Tensor::empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i) put(t, i, value(i));
  return t;
}

// Member `r`'s pattern: the tensor it contributes.
Tensor contribution(DType dtype, int64_t n, int r, int64_t salt) {
  return filled(dtype, n, [&](int64_t i) { return pattern(dtype, r, i, salt); });
}

// The reduction over members 0..size-1 of pattern(., i, salt), in int64 then stored as the dtype.
int64_t reduced(DType dtype, ReduceOp op, int size, int64_t i, int64_t salt) {
  int64_t acc = pattern(dtype, 0, i, salt);
  for (int r = 1; r < size; ++r) {
    const int64_t v = pattern(dtype, r, i, salt);
    acc = op == ReduceOp::Sum ? acc + v : op == ReduceOp::Max ? std::max(acc, v) : std::min(acc, v);
  }
  return as_dtype(dtype, acc);
}

// Whether every element of `t` is expected(i); the failure names the first wrong element and the count.
::testing::AssertionResult holds(const Tensor& t, const std::function<int64_t(int64_t)>& expected) {
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (get(t, i) != expected(i) && wrong++ == 0) first = i;
  if (wrong == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << wrong << " of " << t.numel() << " elements wrong; first at " << first
                                       << ": got " << get(t, first) << ", expected " << expected(first);
}

std::string context(const Communicator& comm, DType dtype, int64_t n) {
  return str_cat("group '", comm.name(), "' (rank ", comm.rank(), " of ", comm.size(), "), ", n, " x ",
                 dtype_name(dtype));
}

class Communicators : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = MpiCommunicator::world({.timeout = kTestTimeout});
    const int n = world_size(), me = world_rank();
    std::vector<int> parity, reversed;
    for (int r = me % 2; r < n; r += 2) parity.push_back(r);
    for (int r = n - 1; r >= 0; --r) reversed.push_back(r);
    parity_ = world_->split(parity, "parity");
    reversed_ = world_->split(reversed, "reversed");
  }
  // No rank runs ahead into the next case with something of this one pending.
  void TearDown() override { world_->barrier(); }

  std::vector<MpiCommunicator*> groups() const { return {world_.get(), parity_.get(), reversed_.get()}; }
  // The world again with calls split at `chunk` elements.
  static std::unique_ptr<MpiCommunicator> chunked(int64_t chunk) {
    return MpiCommunicator::world({.timeout = kTestTimeout, .max_chunk_elements = chunk});
  }

  std::unique_ptr<MpiCommunicator> world_, parity_, reversed_;
};

TEST_F(Communicators, GroupsKnowTheirMembers) {
  const int n = world_size(), me = world_rank();
  EXPECT_EQ(world_->size(), n);
  EXPECT_EQ(world_->rank(), me);
  EXPECT_EQ(world_->name(), "world");
  std::vector<int> all(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) all[r] = r;
  EXPECT_EQ(world_->world_ranks(), all);

  EXPECT_EQ(parity_->name(), "parity");
  EXPECT_EQ(parity_->size(), (n - me % 2 + 1) / 2);
  EXPECT_EQ(parity_->rank(), me / 2);
  for (int r = 0; r < parity_->size(); ++r) EXPECT_EQ(parity_->world_ranks()[r], me % 2 + 2 * r);

  EXPECT_EQ(reversed_->size(), n);
  EXPECT_EQ(reversed_->rank(), n - 1 - me);
  for (int r = 0; r < n; ++r) EXPECT_EQ(reversed_->world_ranks()[r], n - 1 - r);
  // A group of a group: the reversed group's even group ranks (world ranks n-1, n-3, ...).
  std::vector<int> evens;
  for (int r = (n - 1 - me) % 2; r < n; r += 2) evens.push_back(n - 1 - r);
  auto sub = reversed_->split(evens, "reversed_parity");
  EXPECT_EQ(sub->world_ranks(), evens);
  sub->barrier();
}

TEST_F(Communicators, AllReduceEveryOpAndDtype) {
  int64_t salt = 0;
  for (MpiCommunicator* comm : groups())
    for (DType dtype : kReduceDtypes)
      for (ReduceOp op : kOps)
        for (int64_t n : kSizes) {
          ++salt;
          Tensor t = contribution(dtype, n, comm->rank(), salt);
          comm->all_reduce(t, op);
          EXPECT_TRUE(holds(t, [&](int64_t i) { return reduced(dtype, op, comm->size(), i, salt); }))
              << op_name(op) << " on " << context(*comm, dtype, n);
        }
}

TEST_F(Communicators, AllReduceInPiecesThatNoRankCountDivides) {
  for (int64_t chunk : {7, 1000}) {
    auto comm = chunked(chunk);
    int64_t salt = 100 + chunk;
    for (DType dtype : {DType::I32, DType::F64, DType::U8})
      for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{1001}, int64_t{3 * chunk + 2}}) {
        ++salt;
        Tensor t = contribution(dtype, n, comm->rank(), salt);
        comm->all_reduce(t, ReduceOp::Sum);
        EXPECT_TRUE(holds(t, [&](int64_t i) { return reduced(dtype, ReduceOp::Sum, comm->size(), i, salt); }))
            << "pieces of " << chunk << ", " << context(*comm, dtype, n);
      }
  }
}

TEST_F(Communicators, AllReduceOfNothing) {
  for (MpiCommunicator* comm : groups()) {
    Tensor t = Tensor::empty({0}, DType::F32);
    comm->all_reduce(t);
    EXPECT_EQ(t.numel(), 0);
  }
}

TEST_F(Communicators, ReduceScatterEveryOpAndDtype) {
  int64_t salt = 200;
  for (MpiCommunicator* comm : groups())
    for (DType dtype : kReduceDtypes)
      for (ReduceOp op : kOps)
        for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1001}, (int64_t{1} << 18) + 1}) {
          ++salt;
          const int size = comm->size(), me = comm->rank();
          Tensor input = contribution(dtype, size * n, me, salt);
          Tensor output = filled(dtype, n, [](int64_t) { return 3; });
          comm->reduce_scatter(input, output, op);
          // Member me gets the reduction of chunk me: elements me*n .. me*n + n-1 of the input.
          EXPECT_TRUE(holds(output, [&](int64_t i) { return reduced(dtype, op, size, me * n + i, salt); }))
              << op_name(op) << " on " << context(*comm, dtype, n);
        }
}

TEST_F(Communicators, ReduceScatterInPieces) {
  for (int64_t chunk : {7, 1000}) {
    auto comm = chunked(chunk);
    const int size = comm->size(), me = comm->rank();
    int64_t salt = 300 + chunk;
    for (int64_t n : {int64_t{1}, int64_t{1001}, int64_t{2 * chunk + 3}}) {
      ++salt;
      Tensor input = contribution(DType::I64, size * n, me, salt);
      Tensor output = Tensor::empty({n}, DType::I64);
      comm->reduce_scatter(input, output, ReduceOp::Max);
      EXPECT_TRUE(holds(output, [&](int64_t i) { return reduced(DType::I64, ReduceOp::Max, size, me * n + i, salt); }))
          << "pieces of " << chunk << ", " << context(*comm, DType::I64, n);
    }
  }
}

TEST_F(Communicators, AllGatherAnyDtype) {
  int64_t salt = 400;
  for (MpiCommunicator* comm : groups())
    for (DType dtype : kMoveDtypes)
      for (int64_t n : kSizes) {
        ++salt;
        const int size = comm->size();
        Tensor input = contribution(dtype, n, comm->rank(), salt);
        Tensor output = filled(dtype, size * n, [](int64_t) { return 5; });
        comm->all_gather(input, output);
        // Chunk r is member r's input.
        EXPECT_TRUE(holds(output, [&](int64_t i) { return as_dtype(dtype, pattern(dtype, i / n, i % n, salt)); }))
            << context(*comm, dtype, n);
      }
}

TEST_F(Communicators, AllGatherInPlaceAndInPieces) {
  for (int64_t chunk : {int64_t{7}, int64_t{INT32_MAX}}) {
    auto comm = chunked(chunk);
    const int size = comm->size(), me = comm->rank();
    int64_t salt = 500 + chunk % 1000;
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1001}}) {
      ++salt;
      // In place: the input is this member's chunk of the output, as a ZeRO shard in its bucket.
      Tensor output = filled(DType::BF16, size * n, [](int64_t) { return 9; });
      Tensor own = output.narrow(0, me * n, n);
      for (int64_t i = 0; i < n; ++i) put(own, i, pattern(DType::BF16, me, i, salt));
      comm->all_gather(own, output);
      EXPECT_TRUE(
          holds(output, [&](int64_t i) { return as_dtype(DType::BF16, pattern(DType::BF16, i / n, i % n, salt)); }))
          << "in place, pieces of " << chunk << ", " << context(*comm, DType::BF16, n);
      // A separate input, in pieces.
      Tensor input = contribution(DType::I32, n, me, salt);
      Tensor gathered = Tensor::empty({size * n}, DType::I32);
      comm->all_gather(input, gathered);
      EXPECT_TRUE(holds(gathered, [&](int64_t i) { return pattern(DType::I32, i / n, i % n, salt); }))
          << "pieces of " << chunk << ", " << context(*comm, DType::I32, n);
    }
  }
}

TEST_F(Communicators, ReduceScatterAndAllGatherRefuseLengthsTheGroupDoesNotDivide) {
  // The world has 2 or more members, so 2 * size + 1 is never a multiple of it.
  const int size = world_->size();
  Tensor input = Tensor::empty({2 * size + 1}, DType::F32);
  Tensor output = Tensor::empty({2}, DType::F32);
  const std::string rs = error_of([&] { world_->reduce_scatter(input, output); });
  EXPECT_TRUE(has(rs, "reduce_scatter on group 'world'"));
  EXPECT_TRUE(has(rs, str_cat("has ", 2 * size + 1, " elements, not a multiple of the group's ", size, " members")));

  Tensor shard = Tensor::empty({2}, DType::F32);
  Tensor odd = Tensor::empty({2 * size + 1}, DType::F32);
  const std::string ag = error_of([&] { world_->all_gather(shard, odd); });
  EXPECT_TRUE(has(ag, "all_gather on group 'world'"));
  EXPECT_TRUE(has(ag, str_cat("has ", 2 * size + 1, " elements, not a multiple of the group's ", size, " members")));

  // A multiple of the size, but not the output's.
  Tensor even = Tensor::empty({2 * size}, DType::F32);
  Tensor three = Tensor::empty({3}, DType::F32);
  EXPECT_TRUE(has(error_of([&] { world_->reduce_scatter(even, three); }), "expected 2 (the input's"));
  EXPECT_TRUE(has(error_of([&] { world_->all_gather(three, even); }), str_cat("expected ", 3 * size)));
  Tensor wrong_dtype = Tensor::empty({2}, DType::F64);
  EXPECT_TRUE(has(error_of([&] { world_->reduce_scatter(even, wrong_dtype); }), "expected the same dtype"));
  // Nothing was started: the world still works.
  Tensor t = contribution(DType::I32, 3, world_->rank(), 1);
  world_->all_reduce(t);
  EXPECT_TRUE(holds(t, [&](int64_t i) { return reduced(DType::I32, ReduceOp::Sum, size, i, 1); }));
}

TEST_F(Communicators, BroadcastFromEveryRoot) {
  // Groups of one parity have different sizes, so the salt counts from each group's own base.
  int64_t base = 600;
  for (MpiCommunicator* comm : groups()) {
    base += 1000;
    int64_t salt = base;
    for (int root = 0; root < comm->size(); ++root)
      for (DType dtype : {DType::I32, DType::F64, DType::U8, DType::BF16})
        for (int64_t n : kSizes) {
          ++salt;
          Tensor t =
              comm->rank() == root ? contribution(dtype, n, root, salt) : filled(dtype, n, [](int64_t) { return 1; });
          comm->broadcast(t, root);
          EXPECT_TRUE(holds(t, [&](int64_t i) { return as_dtype(dtype, pattern(dtype, root, i, salt)); }))
              << "from root " << root << " on " << context(*comm, dtype, n);
        }
  }
}

TEST_F(Communicators, BroadcastInPieces) {
  for (int64_t chunk : {7, 1000}) {
    auto comm = chunked(chunk);
    int64_t salt = 700 + chunk;
    const int root = comm->size() - 1;
    for (int64_t n : {int64_t{1}, int64_t{8}, int64_t{1001}, int64_t{5 * chunk + 1}}) {
      ++salt;
      Tensor t = comm->rank() == root ? contribution(DType::F32, n, root, salt)
                                      : filled(DType::F32, n, [](int64_t) { return 0; });
      comm->broadcast(t, root);
      EXPECT_TRUE(holds(t, [&](int64_t i) { return pattern(DType::F32, root, i, salt); }))
          << "pieces of " << chunk << ", " << context(*comm, DType::F32, n);
    }
  }
}

// Every member sends to the next and receives from the previous, both in flight at once.
void ring(MpiCommunicator& comm, DType dtype, int64_t n, int64_t salt) {
  const int size = comm.size(), me = comm.rank();
  const int next = (me + 1) % size, previous = (me + size - 1) % size;
  Tensor out = contribution(dtype, n, me, salt);
  Tensor in = filled(dtype, n, [](int64_t) { return 2; });
  auto recv = comm.recv_async(in, previous);
  auto send = comm.send_async(out, next);
  send->wait();
  recv->wait();
  EXPECT_TRUE(holds(in, [&](int64_t i) { return as_dtype(dtype, pattern(dtype, previous, i, salt)); }))
      << "ring, from rank " << previous << ", " << context(comm, dtype, n);
}

TEST_F(Communicators, SendRecvAroundARing) {
  int64_t salt = 800;
  for (MpiCommunicator* comm : groups())
    for (DType dtype : {DType::I64, DType::BF16})
      for (int64_t n : kSizes) ring(*comm, dtype, n, ++salt);
  for (int64_t chunk : {7, 1000}) {
    auto comm = chunked(chunk);
    for (int64_t n : {int64_t{1}, int64_t{1001}, int64_t{3 * chunk + 1}}) ring(*comm, DType::U8, n, ++salt);
  }
}

TEST_F(Communicators, SendRecvBetweenPairs) {
  // Ranks (0, 1), (2, 3), ... exchange with blocking calls in opposite orders; an odd last rank
  // sits out (point to point needs no one else).
  int64_t salt = 900;
  for (MpiCommunicator* comm : groups()) {
    const int me = comm->rank(), peer = me ^ 1;
    for (int64_t n : kSizes) {
      ++salt;
      if (peer >= comm->size()) continue;
      Tensor out = contribution(DType::I32, n, me, salt);
      Tensor in = Tensor::empty({n}, DType::I32);
      if (me % 2 == 0) {
        comm->send(out, peer);
        comm->recv(in, peer);
      } else {
        comm->recv(in, peer);
        comm->send(out, peer);
      }
      EXPECT_TRUE(holds(in, [&](int64_t i) { return pattern(DType::I32, peer, i, salt); }))
          << "pair with rank " << peer << ", " << context(*comm, DType::I32, n);
    }
  }
}

TEST_F(Communicators, RecvOfAShorterMessageFails) {
  // World rank 1 receives 7 elements where rank 0 sends 5.
  if (world_->rank() == 0) {
    world_->send(contribution(DType::I32, 5, 0, 1), 1);
  } else if (world_->rank() == 1) {
    Tensor in = Tensor::empty({7}, DType::I32);
    const std::string message = error_of([&] { world_->recv(in, 0); });
    EXPECT_TRUE(has(message, "recv from rank 0 (world rank 0) of group 'world' (7 x i32)"));
    EXPECT_TRUE(has(message, "a message of 5 elements arrived where 7 were expected"));
  }
}

TEST_F(Communicators, ManyOperationsInFlightWaitedInReverse) {
  for (MpiCommunicator* comm : groups()) {
    const int size = comm->size(), me = comm->rank();
    const int next = (me + 1) % size, previous = (me + size - 1) % size;
    Tensor a = contribution(DType::I32, 1001, me, 1);
    Tensor b_in = contribution(DType::F32, 7, me, 2);
    Tensor b_out = Tensor::empty({7 * size}, DType::F32);
    Tensor c = contribution(DType::I64, 1001, me, 3);
    Tensor d_in = contribution(DType::F64, 3 * size, me, 4);
    Tensor d_out = Tensor::empty({3}, DType::F64);
    Tensor e_out = contribution(DType::U8, 999, me, 5);
    Tensor e_in = Tensor::empty({999}, DType::U8);
    Tensor f = contribution(DType::I64, (int64_t{1} << 18) + 5, me, 6);

    std::vector<std::unique_ptr<Work>> works;
    works.push_back(comm->all_reduce_async(a, ReduceOp::Max));
    works.push_back(comm->all_gather_async(b_in, b_out));
    works.push_back(comm->broadcast_async(c, size - 1));
    works.push_back(comm->recv_async(e_in, previous));
    works.push_back(comm->reduce_scatter_async(d_in, d_out, ReduceOp::Sum));
    works.push_back(comm->send_async(e_out, next));
    works.push_back(comm->all_reduce_async(f, ReduceOp::Min));
    // The first one by polling, then the rest newest first.
    while (!works.front()->test()) {
    }
    EXPECT_TRUE(works.front()->test());  // stays complete
    for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait();

    EXPECT_TRUE(holds(a, [&](int64_t i) { return reduced(DType::I32, ReduceOp::Max, size, i, 1); })) << comm->name();
    EXPECT_TRUE(holds(b_out, [&](int64_t i) { return pattern(DType::F32, i / 7, i % 7, 2); })) << comm->name();
    EXPECT_TRUE(holds(c, [&](int64_t i) { return pattern(DType::I64, size - 1, i, 3); })) << comm->name();
    EXPECT_TRUE(holds(d_out, [&](int64_t i) { return reduced(DType::F64, ReduceOp::Sum, size, me * 3 + i, 4); }))
        << comm->name();
    EXPECT_TRUE(holds(e_in, [&](int64_t i) { return pattern(DType::U8, previous, i, 5); })) << comm->name();
    EXPECT_TRUE(holds(f, [&](int64_t i) { return reduced(DType::I64, ReduceOp::Min, size, i, 6); })) << comm->name();
  }
}

// The rest of the body of a timeout message after "Not entered by: ", up to its period.
std::string not_entered(const std::string& message) {
  const std::string key = "Not entered by: ";
  const size_t start = message.find(key);
  if (start == std::string::npos) return "(no \"" + key + "\" in: " + message + ")";
  return message.substr(start + key.size(), message.find('.', start) - start - key.size());
}

// The members of `comm` with world ranks in `skippers` do not enter all_reduce #2 (after barrier
// #1) until the others have timed out on it; the others' CommError must name the skippers by world
// rank. Then the skippers join, the others wait again, and everyone has the right sum.
void check_timeout(MpiCommunicator& comm, MpiCommunicator& world, const std::vector<int>& skippers) {
  const int me = world_rank();
  const bool skip = std::find(skippers.begin(), skippers.end(), me) != skippers.end();
  comm.barrier();
  Tensor t = contribution(DType::I32, 1001, comm.rank(), 7);
  Tensor token = filled(DType::I32, 1, [](int64_t) { return 1; });
  if (!skip) {
    auto work = comm.all_reduce_async(t);
    const auto start = std::chrono::steady_clock::now();
    std::string message = "(no CommError)";
    try {
      work->wait();
    } catch (const CommError& e) {
      message = e.what();
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(waited, 1.9);
    EXPECT_LT(waited, 30.0);
    EXPECT_TRUE(has(message, str_cat("all_reduce #2 of group '", comm.name(), "' (1001 x i32) timed out after 2 s")));
    EXPECT_TRUE(has(message, str_cat("on world rank ", me, " (rank ", comm.rank(), " of ", comm.size())));
    std::string expected;
    for (int r = 0; r < comm.size(); ++r) {
      const int w = comm.world_ranks()[r];
      if (std::find(skippers.begin(), skippers.end(), w) != skippers.end())
        expected += str_cat(expected.empty() ? "" : ", ", "world rank ", w, " (at #1)");
    }
    EXPECT_EQ(not_entered(message), expected) << message;
    // Let the skippers in; the operation is still in flight and now completes.
    for (int s : skippers) world.send(token, s);
    work->wait();
  } else {
    std::vector<Tensor> tokens;
    std::vector<std::unique_ptr<Work>> waiting;
    for (int r = 0; r < world.size(); ++r) {
      if (std::find(skippers.begin(), skippers.end(), r) != skippers.end()) continue;
      tokens.push_back(Tensor::empty({1}, DType::I32));
      waiting.push_back(world.recv_async(tokens.back(), r));
    }
    for (auto& w : waiting) w->wait();
    comm.all_reduce(t);
  }
  EXPECT_TRUE(holds(t, [&](int64_t i) { return reduced(DType::I32, ReduceOp::Sum, comm.size(), i, 7); }))
      << comm.name();
  comm.barrier();
}

TEST_F(Communicators, TimeoutNamesTheMembersThatDidNotEnter) {
  const int n = world_size();
  auto world = MpiCommunicator::world({.timeout = std::chrono::seconds(2)});
  // World rank 0 skips, and the last one too with 3 or more ranks.
  std::vector<int> skippers = {0};
  if (n >= 3) skippers.push_back(n - 1);
  check_timeout(*world, *world_, skippers);

  // Point to point: world rank 0 waits for a message that rank 1 sends only after the timeout.
  Tensor message = filled(DType::I32, 5, [](int64_t i) { return 40 + i; });
  Tensor token = filled(DType::I32, 1, [](int64_t) { return 1; });
  if (world->rank() == 0) {
    Tensor in = Tensor::empty({5}, DType::I32);
    auto recv = world->recv_async(in, 1);
    std::string text = "(no CommError)";
    try {
      recv->wait();
    } catch (const CommError& e) {
      text = e.what();
    }
    EXPECT_TRUE(
        has(text, "recv from rank 1 (world rank 1) of group 'world' (5 x i32) timed out after 2 s on world rank 0"));
    EXPECT_TRUE(has(
        text, "Missing: the peer, world rank 1, has not matched it (its last collective on the group is #3, barrier)"));
    world_->send(token, 1);
    recv->wait();
    EXPECT_TRUE(holds(in, [](int64_t i) { return 40 + i; }));
  } else if (world->rank() == 1) {
    world_->recv(token, 0);
    world->send(message, 0);
  }
  world_->barrier();  // the others wait here, not on `world` whose 2 s ranks 0 and 1 outlast

  // In the reversed group (which inherits the 2 s) group rank 0 is world rank n-1: the message
  // names world ranks.
  std::vector<int> reversed;
  for (int r = n - 1; r >= 0; --r) reversed.push_back(r);
  auto group = world->split(reversed, "reversed");
  check_timeout(*group, *world_, {n - 1});
}

TEST_F(Communicators, UsageErrorsNameTheCollectiveAndTheGroup) {
  Tensor bf16 = Tensor::empty({4}, DType::BF16);
  EXPECT_TRUE(has(error_of([&] { parity_->all_reduce(bf16); }),
                  "all_reduce on group 'parity': reductions are defined for f32, f64, i32, i64 and u8, not bf16"));
  Tensor square = Tensor::empty({3, 5}, DType::F32);
  Tensor strided = square.transpose(0, 1);
  EXPECT_TRUE(has(error_of([&] { world_->broadcast(strided, 0); }),
                  "broadcast on group 'world': the tensor must be contiguous"));
  Tensor t = Tensor::empty({4}, DType::F32);
  EXPECT_TRUE(has(error_of([&] { world_->broadcast(t, world_->size()); }),
                  str_cat("root ", world_->size(), " is not a rank of the group's ", world_->size(), " members")));
  EXPECT_TRUE(has(error_of([&] { world_->send(t, -1); }), "send on group 'world': peer -1 is not a rank"));

  // Split: every rank passes a list without itself, then one naming a rank that does not exist.
  const int n = world_size(), me = world_rank();
  EXPECT_TRUE(has(error_of([&] { world_->split({(me + 1) % n}, "others"); }),
                  str_cat("split of group 'world' into 'others': this rank (world rank ", me, ") is not in members")));
  EXPECT_TRUE(has(error_of([&] {
                    world_->split({me, n + 5}, "ghost");
                  }),
                  str_cat("world rank ", n + 5, " is not a member of 'world'")));
  EXPECT_TRUE(has(error_of([] { MpiCommunicator::world({.max_chunk_elements = 0}); }),
                  "CommOptions: max_chunk_elements must be in [1, 2147483647], got 0"));
  // Nothing was left pending: the groups still work.
  for (MpiCommunicator* comm : groups()) comm->barrier();
}

TEST(CommOptions, TimeoutFromTheEnvironment) {
  ::unsetenv("BVLLM_COMM_TIMEOUT_S");
  EXPECT_EQ(default_comm_timeout(), std::chrono::minutes(10));
  ::setenv("BVLLM_COMM_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(default_comm_timeout(), std::chrono::milliseconds(2500));
  EXPECT_EQ(CommOptions{}.timeout, std::chrono::milliseconds(2500));
  ::setenv("BVLLM_COMM_TIMEOUT_S", "ten", 1);
  EXPECT_TRUE(has(error_of([] { default_comm_timeout(); }), "BVLLM_COMM_TIMEOUT_S='ten': expected a positive number"));
  ::setenv("BVLLM_COMM_TIMEOUT_S", "0", 1);
  EXPECT_TRUE(has(error_of([] { default_comm_timeout(); }), "expected a positive number of seconds"));
  ::unsetenv("BVLLM_COMM_TIMEOUT_S");
}

}  // namespace
}  // namespace bvllm::parallel
