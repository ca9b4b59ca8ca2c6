#include "parallel/mpi_communicator.h"

#include <glog/logging.h>
// The C API only: Open MPI's mpi.h otherwise pulls in its deprecated C++ bindings, which need
// libmpi_cxx (MPI::MPI_C does not link it).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>
#include <utility>

namespace bvllm::parallel {

namespace {

using Clock = std::chrono::steady_clock;

// How long the timeout report waits for the other members' counters before calling them unreadable.
constexpr auto kReportReadLimit = std::chrono::seconds(3);

// Set by abort_job: MpiSession then leaves MPI alone (MPI_Abort does not return, but be safe).
bool g_aborting = false;
// Operations that never completed, left by communicators that were destroyed: MPI may still
// touch their buffers, and MPI_Finalize would wait on them, so MpiSession skips it (the job is
// broken; it should have called abort_job).
int g_abandoned_ops = 0;

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

bool mpi_live() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// The collectives, for messages and for the record each member publishes in the window.
enum class Kind : int64_t { None = 0, AllReduce, ReduceScatter, AllGather, Broadcast, Barrier };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::AllReduce: return "all_reduce";
    case Kind::ReduceScatter: return "reduce_scatter";
    case Kind::AllGather: return "all_gather";
    case Kind::Broadcast: return "broadcast";
    case Kind::Barrier: return "barrier";
    case Kind::None: break;
  }
  return "nothing";
}

// What a member entered, packed in one int64 so that a reader sees it whole: kind (8 bits),
// dtype (8 bits), element count (48 bits; larger counts are clipped, this is for messages only).
constexpr int64_t kCountBits = 48;
int64_t pack_what(Kind kind, DType dtype, int64_t count) {
  return (static_cast<int64_t>(kind) << 56) | (static_cast<int64_t>(dtype) << kCountBits) |
         std::min<int64_t>(count, (int64_t{1} << kCountBits) - 1);
}
std::string what_str(int64_t what) {
  const auto kind = static_cast<Kind>((what >> 56) & 0xff);
  if (kind == Kind::Barrier || kind == Kind::None) return kind_name(kind);
  const auto dtype = static_cast<DType>((what >> kCountBits) & 0xff);
  return str_cat(kind_name(kind), ", ", what & ((int64_t{1} << kCountBits) - 1), " x ", dtype_name(dtype));
}

// MPI types for reductions (the dtypes communicator.h defines them for).
MPI_Datatype reduce_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
    default: return MPI_DATATYPE_NULL;
  }
}

// all_gather, broadcast and send/recv move any dtype as unsigned integers of its width, so counts
// stay elements (bf16 moves as MPI_UINT16_T).
MPI_Datatype move_type(DType dtype) {
  switch (dtype_size(dtype)) {
    case 1: return MPI_UINT8_T;
    case 2: return MPI_UINT16_T;
    case 4: return MPI_UINT32_T;
    case 8: return MPI_UINT64_T;
  }
  LOG(FATAL) << "no MPI type of " << dtype_size(dtype) << " bytes for " << dtype_name(dtype);
}

// Open MPI 4.1's AVX reductions add 8-bit integers with saturation (open-mpi/ompi#8045, closed as
// wontfix): a u8 sum clamped at 255 for vectors of 16 bytes or more and wrapped for shorter ones.
// bvllm's u8 sum wraps modulo 256 at every length, as C does, through its own MPI operation.
void u8_wrapping_sum(void* in, void* inout, int* length, MPI_Datatype* /*type*/) {
  const auto* a = static_cast<const uint8_t*>(in);
  auto* b = static_cast<uint8_t*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = static_cast<uint8_t>(a[i] + b[i]);
}
MPI_Op g_u8_sum = MPI_OP_NULL;  // made on first use, freed by MpiSession

MPI_Op mpi_op(ReduceOp op, DType dtype) {
  switch (op) {
    case ReduceOp::Sum:
      if (dtype != DType::U8) return MPI_SUM;
      if (g_u8_sum == MPI_OP_NULL) MPI_Op_create(&u8_wrapping_sum, /*commute=*/1, &g_u8_sum);
      return g_u8_sum;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

// Calls `issue(offset, n)` for consecutive pieces of at most `chunk` of `count` elements; once,
// with n = 0, for an empty tensor (every member still joins the collective).
void for_chunks(int64_t count, int64_t chunk, const std::function<void(int64_t, int)>& issue) {
  int64_t offset = 0;
  do {
    const int64_t n = std::min(chunk, count - offset);
    issue(offset, static_cast<int>(n));
    offset += n;
  } while (offset < count);
}

std::byte* bytes_of(const Tensor& t) { return static_cast<std::byte*>(t.raw_data()); }

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream out;
  out << static_cast<double>(ms.count()) / 1000.0 << " s";
  return out.str();
}

}  // namespace

// --- session, world, abort ---------------------------------------------------------------------

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  // Open MPI's libnbc runs MPI_Iallreduce as a binomial reduce-then-broadcast whenever the buffer
  // is in place or the group has fewer than 4 ranks (coll/libnbc/nbc_iallreduce.c), which moves
  // twice a ring's data: on 2 ranks it took twice as long as the blocking MPI_Allreduce at 64-256
  // MB, and its ring matches it (docs/benchmarks.md, allreduce_cpu). A value already in the
  // environment wins; other MPI libraries ignore the variable.
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", /*overwrite=*/0);
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) throw CommError(str_cat("MPI_Init_thread failed: ", mpi_error_string(rc)));
  owner_ = true;
  // Communicators report their errors as CommError; MPI_COMM_WORLD's own calls (MPI_Abort, the
  // test main's verdict) keep MPI's default of ending the job.
  if (provided < MPI_THREAD_FUNNELED)
    LOG(WARNING) << "MPI provides thread level " << provided << " below MPI_THREAD_FUNNELED";
}

MpiSession::~MpiSession() {
  if (!owner_ || g_aborting || !mpi_live()) return;
  if (g_abandoned_ops > 0) {
    LOG(ERROR) << "rank " << world_rank() << ": " << g_abandoned_ops
               << " MPI operation(s) never completed; not calling MPI_Finalize (it would wait on them)";
    return;
  }
  if (g_u8_sum != MPI_OP_NULL) MPI_Op_free(&g_u8_sum);
  MPI_Finalize();
}

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

bool mpi_initialized() { return mpi_live(); }

int world_rank() {
  if (!mpi_live()) return 0;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  if (!mpi_live()) return 1;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

void abort_job(const std::string& message, int code) {
  std::cerr << "bvllm: rank " << world_rank() << " of " << world_size() << ": " << message << std::endl;
  std::fflush(stderr);
  if (mpi_live()) {
    g_aborting = true;
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; should it, do not run MPI's destructors
  }
  std::exit(code);
}

std::chrono::milliseconds default_comm_timeout() {
  const char* env = std::getenv("BVLLM_COMM_TIMEOUT_S");
  if (env == nullptr || *env == '\0') return std::chrono::minutes(10);
  char* end = nullptr;
  const double seconds = std::strtod(env, &end);
  BVLLM_REQUIRE(end != env && *end == '\0' && std::isfinite(seconds) && seconds > 0, "BVLLM_COMM_TIMEOUT_S='", env,
                "': expected a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

// --- the communicator's state ------------------------------------------------------------------

namespace {

// An operation in flight: its requests and everything MPI may still read or write.
struct Pending {
  std::vector<MPI_Request> requests;
  std::vector<std::shared_ptr<Storage>> keep;         // the tensors' storage
  std::vector<std::unique_ptr<std::byte[]>> buffers;  // staging, and the report's read buffers
};

// Where a destroyed communicator's unfinished operations go: kept until exit, so MPI can still
// write into their buffers.
std::vector<Pending>& leaked() {
  static std::vector<Pending> operations;
  return operations;
}

}  // namespace

struct MpiCommunicator::State {
  MPI_Comm comm = MPI_COMM_NULL;
  // Window of two int64 per member: [sequence number of the last collective entered, pack_what].
  // MPI_WIN_NULL when the MPI library could not make one (the report then cannot name anyone).
  MPI_Win win = MPI_WIN_NULL;
  int rank = 0;
  int size = 1;
  int my_world_rank = 0;
  std::string name;
  std::vector<int> world_ranks;
  CommOptions options;
  int64_t seq = 0;  // collectives entered on this communicator
  std::vector<Pending> abandoned;

  State(MPI_Comm comm_in, std::string name_in, CommOptions options_in);
  ~State();

  // "all_reduce on group 'dp'": the prefix of a usage error.
  std::string where(const char* op) const { return str_cat(op, " on group '", name, "'"); }
  // Throws CommError for an MPI call that failed.
  void check(int rc, const char* call, const std::string& during) const {
    if (rc == MPI_SUCCESS) return;
    throw CommError(str_cat(call, " failed on world rank ", my_world_rank, " (rank ", rank, " of ", size, " in group '",
                            name, "') during ", during, ": ", mpi_error_string(rc)));
  }
  // Enters a collective: the next sequence number, published for the others' timeout reports.
  int64_t enter(Kind kind, DType dtype, int64_t count);
  // The other members' [seq, what]; an entry of {-1, 0} could not be read in time.
  std::vector<std::array<int64_t, 2>> read_counters();
  std::string member(int group_rank) const { return str_cat("world rank ", world_ranks[group_rank]); }
  // The body of a timeout message for collective `seq`: who had not entered it, who did.
  std::string missing_report(int64_t seq, int64_t what);
  std::string peer_report(int peer);
};

namespace {

// Before any collective, so that a bad value is refused on every rank alike with nothing to undo.
void check_options(const CommOptions& options) {
  BVLLM_REQUIRE(options.timeout.count() > 0, "CommOptions: the timeout must be positive, got ", options.timeout.count(),
                " ms");
  BVLLM_REQUIRE(options.max_chunk_elements >= 1 && options.max_chunk_elements <= INT_MAX,
                "CommOptions: max_chunk_elements must be in [1, ", INT_MAX, "], got ", options.max_chunk_elements);
}

}  // namespace

MpiCommunicator::State::State(MPI_Comm comm_in, std::string name_in, CommOptions options_in)
    : comm(comm_in), name(std::move(name_in)), options(options_in) {
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &my_world_rank);
  world_ranks.resize(static_cast<size_t>(size));
  check(MPI_Allgather(&my_world_rank, 1, MPI_INT, world_ranks.data(), 1, MPI_INT, comm), "MPI_Allgather",
        "the communicator's creation");

  // The counters' window. Passive target for the whole life of the communicator (lock_all once):
  // a member publishes with an atomic MPI_Accumulate(REPLACE) to itself, a reader uses
  // MPI_Rget_accumulate(NO_OP), atomic with it, and only on a timeout.
  void* base = nullptr;
  MPI_Info info = MPI_INFO_NULL;
  const int rc = MPI_Win_allocate(2 * sizeof(int64_t), sizeof(int64_t), info, comm, &base, &win);
  if (rc != MPI_SUCCESS) {
    LOG(WARNING) << "communicator '" << name << "': no RMA window (" << mpi_error_string(rc)
                 << "); a timeout will not name the missing ranks";
    win = MPI_WIN_NULL;
    return;
  }
  MPI_Win_set_errhandler(win, MPI_ERRORS_RETURN);
  std::memset(base, 0, 2 * sizeof(int64_t));
  check(MPI_Win_lock_all(MPI_MODE_NOCHECK, win), "MPI_Win_lock_all", "the communicator's creation");
  // Every member's zeroed counter is in place before anyone can read it.
  check(MPI_Barrier(comm), "MPI_Barrier", "the communicator's creation");
}

MpiCommunicator::State::~State() {
  if (!mpi_live()) return;
  // An abandoned operation that has completed since can be forgotten; one that has not keeps
  // this communicator's MPI objects (freeing them is collective and would wait for the missing).
  std::erase_if(abandoned, [](Pending& p) {
    int done = 0;
    return MPI_Testall(static_cast<int>(p.requests.size()), p.requests.data(), &done, MPI_STATUSES_IGNORE) ==
               MPI_SUCCESS &&
           done;
  });
  if (!abandoned.empty()) {
    g_abandoned_ops += static_cast<int>(abandoned.size());
    LOG(ERROR) << "communicator '" << name << "' destroyed with " << abandoned.size()
               << " operation(s) still in flight on world rank " << my_world_rank << "; its MPI objects are leaked";
    for (Pending& p : abandoned) leaked().push_back(std::move(p));
    return;
  }
  if (win != MPI_WIN_NULL) {
    MPI_Win_unlock_all(win);
    MPI_Win_free(&win);
  }
  MPI_Comm_free(&comm);
}

int64_t MpiCommunicator::State::enter(Kind kind, DType dtype, int64_t count) {
  ++seq;
  if (win != MPI_WIN_NULL) {
    const std::array<int64_t, 2> record{seq, pack_what(kind, dtype, count)};
    const std::string during = str_cat(kind_name(kind), " #", seq);
    check(MPI_Accumulate(record.data(), 2, MPI_INT64_T, rank, 0, 2, MPI_INT64_T, MPI_REPLACE, win), "MPI_Accumulate",
          during);
    check(MPI_Win_flush(rank, win), "MPI_Win_flush", during);
  }
  return seq;
}

std::vector<std::array<int64_t, 2>> MpiCommunicator::State::read_counters() {
  std::vector<std::array<int64_t, 2>> result(static_cast<size_t>(size), {-1, 0});
  if (win == MPI_WIN_NULL) return result;
  // The read buffers and requests outlive this call when a read does not finish (abandoned).
  Pending reads;
  reads.buffers.push_back(std::make_unique<std::byte[]>(static_cast<size_t>(size) * 2 * sizeof(int64_t)));
  auto* values = reinterpret_cast<int64_t*>(reads.buffers.back().get());
  reads.requests.assign(static_cast<size_t>(size), MPI_REQUEST_NULL);
  for (int r = 0; r < size; ++r) {
    if (MPI_Rget_accumulate(nullptr, 0, MPI_INT64_T, values + 2 * r, 2, MPI_INT64_T, r, 0, 2, MPI_INT64_T, MPI_NO_OP,
                            win, &reads.requests[r]) != MPI_SUCCESS)
      reads.requests[r] = MPI_REQUEST_NULL;
    else
      result[r] = {-2, 0};  // issued, not yet read
  }
  const auto deadline = Clock::now() + kReportReadLimit;
  bool pending = true;
  while (pending && Clock::now() < deadline) {
    pending = false;
    for (int r = 0; r < size; ++r) {
      if (reads.requests[r] == MPI_REQUEST_NULL) continue;
      int done = 0;
      if (MPI_Test(&reads.requests[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        reads.requests[r] = MPI_REQUEST_NULL;
        result[r] = {-1, 0};
      } else if (done) {
        result[r] = {values[2 * r], values[2 * r + 1]};
      } else {
        pending = true;
      }
    }
    if (pending) std::this_thread::yield();
  }
  for (auto& entry : result)
    if (entry[0] == -2) entry = {-1, 0};
  if (pending) abandoned.push_back(std::move(reads));
  return result;
}

std::string MpiCommunicator::State::missing_report(int64_t seq_in, int64_t what) {
  const auto counters = read_counters();
  std::vector<std::string> missing, entered, different, unreadable;
  for (int r = 0; r < size; ++r) {
    if (r == rank) continue;
    const auto [their_seq, their_what] = counters[r];
    if (their_seq < 0) {
      unreadable.push_back(member(r));
    } else if (their_seq < seq_in) {
      missing.push_back(str_cat(member(r), " (at #", their_seq, ")"));
    } else if (their_seq == seq_in && their_what != what) {
      different.push_back(str_cat(member(r), " (", what_str(their_what), ")"));
    } else {
      entered.push_back(member(r));
    }
  }
  const auto join = [](const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
    return out;
  };
  std::string report;
  if (!missing.empty()) report += " Not entered by: " + join(missing) + ".";
  if (!different.empty()) report += " Entered as a different collective by: " + join(different) + ".";
  if (!entered.empty()) report += " Entered by: " + join(entered) + ".";
  if (!unreadable.empty())
    report += " Unknown (counter unreadable" + std::string(win == MPI_WIN_NULL ? ": no RMA window" : "") +
              "): " + join(unreadable) + ".";
  if (missing.empty() && different.empty() && unreadable.empty())
    report += " Every member entered it: a count or dtype that differs between members, or a member stuck inside it?";
  return report;
}

std::string MpiCommunicator::State::peer_report(int peer) {
  const auto counters = read_counters();
  if (counters[peer][0] < 0) return str_cat(" Missing: the peer, ", member(peer), " (its progress is unknown).");
  return str_cat(" Missing: the peer, ", member(peer), ", has not matched it (its last collective on the group is #",
                 counters[peer][0], ", ", what_str(counters[peer][1]), ").");
}

// --- Work --------------------------------------------------------------------------------------

namespace {

class MpiWork final : public Work {
 public:
  // `describe` names the operation ("all_reduce #5 (1001 x i32)"); `report` says who is missing.
  MpiWork(std::string describe, std::function<std::string()> report, const std::function<void(Pending&)>& finish,
          std::chrono::milliseconds timeout, std::function<void(Pending&&)> abandon, std::string on_whom)
      : describe_(std::move(describe)),
        report_(std::move(report)),
        finish_(finish),
        timeout_(timeout),
        abandon_(std::move(abandon)),
        on_whom_(std::move(on_whom)) {}

  ~MpiWork() override {
    if (done_) return;
    try {
      if (test()) return;
    } catch (const std::exception& e) {
      LOG(ERROR) << describe_ << ": " << e.what();
    }
    abandon_(std::move(pending_));
  }

  Pending& pending() { return pending_; }
  // recv: each receive request's element count, which the message must fill (a shorter message
  // passes MPI; a longer one is MPI's truncation error).
  void expect(size_t request, int count, MPI_Datatype type) { expected_.push_back({request, count, type}); }

  bool test() override {
    if (done_) return true;
    int done = 0;
    std::vector<MPI_Status> statuses(pending_.requests.size());
    const int rc =
        MPI_Testall(static_cast<int>(pending_.requests.size()), pending_.requests.data(), &done, statuses.data());
    if (rc != MPI_SUCCESS) {
      int code = rc;
      if (rc == MPI_ERR_IN_STATUS)
        for (const MPI_Status& s : statuses)
          if (s.MPI_ERROR != MPI_SUCCESS && s.MPI_ERROR != MPI_ERR_PENDING) code = s.MPI_ERROR;
      // Some requests may still be active: their buffers stay with the communicator.
      done_ = true;
      abandon_(std::move(pending_));
      throw CommError(str_cat(describe_, " failed on ", on_whom_, ": ", mpi_error_string(code)));
    }
    if (!done) return false;
    done_ = true;
    for (const Expected& e : expected_) {
      int got = 0;
      MPI_Get_count(&statuses[e.request], e.type, &got);
      if (got != e.count)
        throw CommError(str_cat(describe_, " on ", on_whom_, ": a message of ", got, " elements arrived where ",
                                e.count, " were expected (the sender's tensor has another size or dtype)"));
    }
    if (finish_) finish_(pending_);
    pending_ = Pending{};
    return true;
  }

  void wait() override {
    const auto start = Clock::now();
    const auto deadline = start + timeout_;
    // MPI progresses only inside MPI calls, so this polls without sleeping, as MPI_Wait does; past
    // the first millisecond it yields between polls so that ranks sharing a core can run.
    for (int64_t polls = 0; !test(); ++polls) {
      if (polls % 16 != 0) continue;
      const auto now = Clock::now();
      if (now >= deadline)
        throw CommError(
            str_cat(describe_, " timed out after ", seconds_str(timeout_), " on ", on_whom_, ".", report_()));
      if (now - start > std::chrono::milliseconds(1)) std::this_thread::yield();
    }
  }

 private:
  std::string describe_;
  std::function<std::string()> report_;
  std::function<void(Pending&)> finish_;
  std::chrono::milliseconds timeout_;
  std::function<void(Pending&&)> abandon_;
  std::string on_whom_;
  Pending pending_;
  struct Expected {
    size_t request;
    int count;
    MPI_Datatype type;
  };
  std::vector<Expected> expected_;
  bool done_ = false;
};

// Checks a tensor every operation needs: defined, on the CPU, contiguous.
// `role`: "tensor", "input" or "output".
void check_tensor(const std::string& where, const char* role, const Tensor& t) {
  BVLLM_REQUIRE(t.defined(), where, ": the ", role, " is undefined");
  BVLLM_REQUIRE(t.device().is_cpu(), where, ": the ", role, " is on ", t.device().str(),
                "; MpiCommunicator moves CPU tensors (CUDA tensors go through NcclCommunicator)");
  BVLLM_REQUIRE(t.is_contiguous(), where, ": the ", role, " must be contiguous (shape ", shape_str(t.shape()),
                ", strides ", shape_str(t.strides()), ")");
}

bool overlap(const Tensor& a, const Tensor& b) {
  if (!a.shares_storage(b)) return false;
  const std::byte* a0 = bytes_of(a);
  const std::byte* b0 = bytes_of(b);
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes() && a.nbytes() > 0 && b.nbytes() > 0;
}

}  // namespace

// --- MpiCommunicator ---------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(std::unique_ptr<State> state) : state_(std::move(state)) {}
MpiCommunicator::~MpiCommunicator() = default;

std::unique_ptr<MpiCommunicator> MpiCommunicator::world(const CommOptions& options) {
  BVLLM_REQUIRE(mpi_live(), "MpiCommunicator::world: MPI is not initialized (make an MpiSession in main first)");
  check_options(options);
  MPI_Comm comm = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) throw CommError(str_cat("MPI_Comm_dup of MPI_COMM_WORLD failed: ", mpi_error_string(rc)));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::make_unique<State>(comm, "world", options)));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(const std::vector<int>& members,
                                                        const std::string& name) const {
  const State& s = *state_;
  const std::string where = str_cat("split of group '", s.name, "' into '", name, "'");
  // A bad list is reported after joining MPI_Comm_split (with no group), so the others are not
  // left waiting in it.
  std::string problem;
  int key = -1;
  for (size_t i = 0; i < members.size() && problem.empty(); ++i) {
    if (std::find(s.world_ranks.begin(), s.world_ranks.end(), members[i]) == s.world_ranks.end())
      problem = str_cat("world rank ", members[i], " is not a member of '", s.name, "'");
    else if (std::find(members.begin(), members.begin() + static_cast<int64_t>(i), members[i]) !=
             members.begin() + static_cast<int64_t>(i))
      problem = str_cat("world rank ", members[i], " is listed twice");
    if (members[i] == s.my_world_rank) key = static_cast<int>(i);
  }
  if (problem.empty() && key < 0) problem = str_cat("this rank (world rank ", s.my_world_rank, ") is not in members");
  const int color = problem.empty() ? *std::min_element(members.begin(), members.end()) : MPI_UNDEFINED;
  MPI_Comm comm = MPI_COMM_NULL;
  s.check(MPI_Comm_split(s.comm, color, std::max(key, 0), &comm), "MPI_Comm_split", where);
  BVLLM_REQUIRE(problem.empty(), where, ": ", problem);
  auto state = std::make_unique<State>(comm, name, s.options);
  // Members of one group must have passed the same list: the group MPI formed is exactly it.
  BVLLM_REQUIRE(state->world_ranks == members, where, ": world rank ", s.my_world_rank, " passed members of size ",
                members.size(), " but its group formed as ", state->size,
                " ranks: every member of a group must pass the same list");
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(state)));
}

int MpiCommunicator::rank() const { return state_->rank; }
int MpiCommunicator::size() const { return state_->size; }
const std::string& MpiCommunicator::name() const { return state_->name; }
const std::vector<int>& MpiCommunicator::world_ranks() const { return state_->world_ranks; }
const CommOptions& MpiCommunicator::options() const { return state_->options; }

namespace {

// A Work for one operation on `state`, which the MpiCommunicator's methods fill with requests.
// (S is MpiCommunicator::State, private to the class.)
template <typename S>
std::unique_ptr<MpiWork> make_work(S& s, std::string describe, std::function<std::string()> report,
                                   std::function<void(Pending&)> finish = {}) {
  return std::make_unique<MpiWork>(
      std::move(describe), std::move(report), finish, s.options.timeout,
      [&s](Pending&& p) { s.abandoned.push_back(std::move(p)); },
      str_cat("world rank ", s.my_world_rank, " (rank ", s.rank, " of ", s.size, " in the group)"));
}

}  // namespace

std::unique_ptr<Work> MpiCommunicator::all_reduce_async(Tensor& tensor, ReduceOp op) {
  State& s = *state_;
  const std::string where = s.where("all_reduce");
  check_tensor(where, "tensor", tensor);
  const MPI_Datatype type = reduce_type(tensor.dtype());
  BVLLM_REQUIRE(type != MPI_DATATYPE_NULL, where, ": reductions are defined for f32, f64, i32, i64 and u8, not ",
                dtype_name(tensor.dtype()));
  const int64_t count = tensor.numel();
  const int64_t what = pack_what(Kind::AllReduce, tensor.dtype(), count);
  const int64_t seq = s.enter(Kind::AllReduce, tensor.dtype(), count);
  const std::string describe =
      str_cat("all_reduce #", seq, " of group '", s.name, "' (", count, " x ", dtype_name(tensor.dtype()), ")");
  auto work = make_work(s, describe, [&s, seq, what] { return s.missing_report(seq, what); });
  work->pending().keep.push_back(tensor.storage());
  std::byte* data = bytes_of(tensor);
  const size_t width = dtype_size(tensor.dtype());
  for_chunks(count, s.options.max_chunk_elements, [&](int64_t offset, int n) {
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Iallreduce(MPI_IN_PLACE, data + offset * width, n, type, mpi_op(op, tensor.dtype()), s.comm, &request),
            "MPI_Iallreduce", describe);
    work->pending().requests.push_back(request);
  });
  return work;
}

std::unique_ptr<Work> MpiCommunicator::reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op) {
  State& s = *state_;
  const std::string where = s.where("reduce_scatter");
  check_tensor(where, "input", input);
  check_tensor(where, "output", output);
  const MPI_Datatype type = reduce_type(input.dtype());
  BVLLM_REQUIRE(type != MPI_DATATYPE_NULL, where, ": reductions are defined for f32, f64, i32, i64 and u8, not ",
                dtype_name(input.dtype()));
  BVLLM_REQUIRE(output.dtype() == input.dtype(), where, ": the output is ", dtype_name(output.dtype()), ", the input ",
                dtype_name(input.dtype()), "; expected the same dtype");
  BVLLM_REQUIRE(input.numel() % s.size == 0, where, ": the input has ", input.numel(),
                " elements, not a multiple of the group's ", s.size, " members (pad it)");
  const int64_t n = input.numel() / s.size;
  BVLLM_REQUIRE(output.numel() == n, where, ": the output has ", output.numel(), " elements; expected ", n,
                " (the input's ", input.numel(), " over ", s.size, " members)");
  BVLLM_REQUIRE(!overlap(input, output), where, ": the output overlaps the input");

  const int64_t what = pack_what(Kind::ReduceScatter, input.dtype(), input.numel());
  const int64_t seq = s.enter(Kind::ReduceScatter, input.dtype(), input.numel());
  const std::string describe = str_cat("reduce_scatter #", seq, " of group '", s.name, "' (", input.numel(), " x ",
                                       dtype_name(input.dtype()), " to ", n, " per member)");
  auto work = make_work(s, describe, [&s, seq, what] { return s.missing_report(seq, what); });
  Pending& p = work->pending();
  p.keep.push_back(input.storage());
  p.keep.push_back(output.storage());
  const size_t width = dtype_size(input.dtype());
  const std::byte* in = bytes_of(input);
  std::byte* out = bytes_of(output);
  const int64_t chunk = s.options.max_chunk_elements;
  if (n <= chunk) {
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Ireduce_scatter_block(in, out, static_cast<int>(n), type, mpi_op(op, input.dtype()), s.comm, &request),
            "MPI_Ireduce_scatter_block", describe);
    p.requests.push_back(request);
    return work;
  }
  // Each piece [offset, offset + c) of every member's chunk, gathered into a staging buffer so
  // that one MPI call reduces it: member r's piece at r * c.
  for_chunks(n, chunk, [&](int64_t offset, int c) {
    auto staging = std::make_unique<std::byte[]>(static_cast<size_t>(s.size) * static_cast<size_t>(c) * width);
    for (int r = 0; r < s.size; ++r)
      std::memcpy(staging.get() + static_cast<size_t>(r) * c * width, in + (r * n + offset) * width, c * width);
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Ireduce_scatter_block(staging.get(), out + offset * width, c, type, mpi_op(op, input.dtype()), s.comm,
                                      &request),
            "MPI_Ireduce_scatter_block", describe);
    p.requests.push_back(request);
    p.buffers.push_back(std::move(staging));
  });
  return work;
}

std::unique_ptr<Work> MpiCommunicator::all_gather_async(const Tensor& input, Tensor& output) {
  State& s = *state_;
  const std::string where = s.where("all_gather");
  check_tensor(where, "input", input);
  check_tensor(where, "output", output);
  BVLLM_REQUIRE(output.dtype() == input.dtype(), where, ": the output is ", dtype_name(output.dtype()), ", the input ",
                dtype_name(input.dtype()), "; expected the same dtype");
  BVLLM_REQUIRE(output.numel() % s.size == 0, where, ": the output has ", output.numel(),
                " elements, not a multiple of the group's ", s.size, " members (pad it)");
  const int64_t n = input.numel();
  BVLLM_REQUIRE(output.numel() == n * s.size, where, ": the output has ", output.numel(), " elements; expected ",
                n * s.size, " (the input's ", n, " times ", s.size, " members)");
  const size_t width = dtype_size(input.dtype());
  const std::byte* in = bytes_of(input);
  std::byte* out = bytes_of(output);
  // In place when the input is this member's own chunk of the output (a ZeRO shard in its bucket).
  const bool in_place = overlap(input, output);
  BVLLM_REQUIRE(!in_place || in == out + s.rank * n * width, where,
                ": the input overlaps the output without being this member's chunk ", s.rank, " of it");

  const int64_t what = pack_what(Kind::AllGather, input.dtype(), n);
  const int64_t seq = s.enter(Kind::AllGather, input.dtype(), n);
  const std::string describe =
      str_cat("all_gather #", seq, " of group '", s.name, "' (", n, " x ", dtype_name(input.dtype()), " per member)");
  const MPI_Datatype type = move_type(input.dtype());
  const int64_t chunk = s.options.max_chunk_elements;
  const int size = s.size;
  if (n <= chunk) {
    auto work = make_work(s, describe, [&s, seq, what] { return s.missing_report(seq, what); });
    Pending& p = work->pending();
    p.keep.push_back(input.storage());
    p.keep.push_back(output.storage());
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Iallgather(in_place ? MPI_IN_PLACE : in, static_cast<int>(n), type, out, static_cast<int>(n), type,
                           s.comm, &request),
            "MPI_Iallgather", describe);
    p.requests.push_back(request);
    return work;
  }
  // Piece by piece into staging buffers (member r's piece at r * c), copied to the output's
  // chunks once every piece has arrived.
  struct Piece {
    int64_t offset;
    int count;
  };
  auto pieces = std::make_shared<std::vector<Piece>>();
  for_chunks(n, chunk, [&](int64_t offset, int c) { pieces->push_back({offset, c}); });
  auto finish = [pieces, out, n, width, size](Pending& p) {
    for (size_t k = 0; k < pieces->size(); ++k) {
      const auto [offset, c] = (*pieces)[k];
      for (int r = 0; r < size; ++r)
        std::memmove(out + (r * n + offset) * width, p.buffers[k].get() + static_cast<size_t>(r) * c * width,
                     c * width);
    }
  };
  auto work = make_work(
      s, describe, [&s, seq, what] { return s.missing_report(seq, what); }, finish);
  Pending& p = work->pending();
  p.keep.push_back(input.storage());
  p.keep.push_back(output.storage());
  for (const auto& [offset, c] : *pieces) {
    auto staging = std::make_unique<std::byte[]>(static_cast<size_t>(size) * static_cast<size_t>(c) * width);
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Iallgather(in + offset * width, c, type, staging.get(), c, type, s.comm, &request), "MPI_Iallgather",
            describe);
    p.requests.push_back(request);
    p.buffers.push_back(std::move(staging));
  }
  return work;
}

std::unique_ptr<Work> MpiCommunicator::broadcast_async(Tensor& tensor, int root) {
  State& s = *state_;
  const std::string where = s.where("broadcast");
  check_tensor(where, "tensor", tensor);
  BVLLM_REQUIRE(root >= 0 && root < s.size, where, ": root ", root, " is not a rank of the group's ", s.size,
                " members");
  const int64_t count = tensor.numel();
  const int64_t what = pack_what(Kind::Broadcast, tensor.dtype(), count);
  const int64_t seq = s.enter(Kind::Broadcast, tensor.dtype(), count);
  const std::string describe = str_cat("broadcast #", seq, " of group '", s.name, "' from rank ", root, " (", count,
                                       " x ", dtype_name(tensor.dtype()), ")");
  auto work = make_work(s, describe, [&s, seq, what] { return s.missing_report(seq, what); });
  work->pending().keep.push_back(tensor.storage());
  std::byte* data = bytes_of(tensor);
  const size_t width = dtype_size(tensor.dtype());
  const MPI_Datatype type = move_type(tensor.dtype());
  for_chunks(count, s.options.max_chunk_elements, [&](int64_t offset, int n) {
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Ibcast(data + offset * width, n, type, root, s.comm, &request), "MPI_Ibcast", describe);
    work->pending().requests.push_back(request);
  });
  return work;
}

std::unique_ptr<Work> MpiCommunicator::send_async(const Tensor& tensor, int peer) {
  State& s = *state_;
  const std::string where = s.where("send");
  check_tensor(where, "tensor", tensor);
  BVLLM_REQUIRE(peer >= 0 && peer < s.size, where, ": peer ", peer, " is not a rank of the group's ", s.size,
                " members");
  const std::string describe = str_cat("send to rank ", peer, " (", s.member(peer), ") of group '", s.name, "' (",
                                       tensor.numel(), " x ", dtype_name(tensor.dtype()), ")");
  auto work = make_work(s, describe, [&s, peer] { return s.peer_report(peer); });
  work->pending().keep.push_back(tensor.storage());
  const std::byte* data = bytes_of(tensor);
  const size_t width = dtype_size(tensor.dtype());
  const MPI_Datatype type = move_type(tensor.dtype());
  for_chunks(tensor.numel(), s.options.max_chunk_elements, [&](int64_t offset, int n) {
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Isend(data + offset * width, n, type, peer, 0, s.comm, &request), "MPI_Isend", describe);
    work->pending().requests.push_back(request);
  });
  return work;
}

std::unique_ptr<Work> MpiCommunicator::recv_async(Tensor& tensor, int peer) {
  State& s = *state_;
  const std::string where = s.where("recv");
  check_tensor(where, "tensor", tensor);
  BVLLM_REQUIRE(peer >= 0 && peer < s.size, where, ": peer ", peer, " is not a rank of the group's ", s.size,
                " members");
  const std::string describe = str_cat("recv from rank ", peer, " (", s.member(peer), ") of group '", s.name, "' (",
                                       tensor.numel(), " x ", dtype_name(tensor.dtype()), ")");
  auto work = make_work(s, describe, [&s, peer] { return s.peer_report(peer); });
  work->pending().keep.push_back(tensor.storage());
  std::byte* data = bytes_of(tensor);
  const size_t width = dtype_size(tensor.dtype());
  const MPI_Datatype type = move_type(tensor.dtype());
  for_chunks(tensor.numel(), s.options.max_chunk_elements, [&](int64_t offset, int n) {
    MPI_Request request = MPI_REQUEST_NULL;
    s.check(MPI_Irecv(data + offset * width, n, type, peer, 0, s.comm, &request), "MPI_Irecv", describe);
    work->expect(work->pending().requests.size(), n, type);
    work->pending().requests.push_back(request);
  });
  return work;
}

void MpiCommunicator::barrier() {
  State& s = *state_;
  const int64_t what = pack_what(Kind::Barrier, DType::U8, 0);
  const int64_t seq = s.enter(Kind::Barrier, DType::U8, 0);
  const std::string describe = str_cat("barrier #", seq, " of group '", s.name, "'");
  auto work = make_work(s, describe, [&s, seq, what] { return s.missing_report(seq, what); });
  MPI_Request request = MPI_REQUEST_NULL;
  s.check(MPI_Ibarrier(s.comm, &request), "MPI_Ibarrier", describe);
  work->pending().requests.push_back(request);
  work->wait();
}

}  // namespace bvllm::parallel
