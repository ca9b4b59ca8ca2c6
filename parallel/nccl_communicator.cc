#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>  // defines: cudaStreamWaitEvent, cudaSetDevice
#include <glog/logging.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "runtime/cuda/allocator.h"  // defines: CachingAllocator::record_stream
#include "runtime/cuda/backend.h"    // defines: device_count
#include "runtime/cuda/check.h"      // defines: BVLLM_CUDA_CHECK
#include "runtime/cuda/stream.h"     // defines: Stream, Event, current_stream

namespace bvllm::parallel {
namespace {

using Clock = std::chrono::steady_clock;

std::string nccl_error(ncclResult_t result, ncclComm_t comm) {
  std::string out = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm);
  if (last && *last) out += str_cat(" (", last, ")");
  return out;
}

// Bool moves as bytes; reductions refuse it before this is asked.
ncclDataType_t nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8:
    case DType::Bool: return ncclUint8;
  }
  LOG(FATAL) << "nccl_dtype: unknown dtype " << static_cast<int>(dtype);
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  LOG(FATAL) << "nccl_op: unknown op " << static_cast<int>(op);
  return ncclSum;
}

const char* op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : op == ReduceOp::Max ? "max" : "min"; }

std::string list_str(const std::vector<int>& ranks) {
  std::string out = "[";
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out + "]";
}

// Makes `device` current while in scope and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    BVLLM_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) BVLLM_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);  // destructors do not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

// Busy-waits briefly (an operation usually completes within microseconds of being polled), then
// sleeps between polls so a long wait does not hold a core.
class Backoff {
 public:
  void pause() {
    if (++polls_ < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

 private:
  int polls_ = 0;
};

// One operation: what it is for messages, the tensors it reads and writes (referenced until it
// completes, so the caching allocator cannot hand their memory to anyone else meanwhile), the
// event on the caller's stream it starts after, and the event on the communicator's stream that
// marks its end (shared by the point-to-point operations launched in one NCCL group; null until
// launched).
struct NcclOp {
  std::string what;  // "all_reduce #7 (1024 f32 elements, sum)"
  std::vector<Tensor> tensors;
  std::unique_ptr<cuda::Event> start;
  std::shared_ptr<cuda::Event> done;
  std::function<ncclResult_t(ncclComm_t, cudaStream_t)> launch;
};

}  // namespace

struct NcclCommunicator::State : std::enable_shared_from_this<State> {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int size = 0;
  int device = 0;
  std::string name;
  std::vector<int> world_ranks;
  CommOptions options;
  std::unique_ptr<cuda::Stream> stream;
  int64_t sequence = 0;
  std::string aborted;                           // why, once the NCCL communicator has been aborted
  std::vector<std::shared_ptr<NcclOp>> pending;  // point-to-point operations not yet launched
  Tensor barrier_buffer;

  ~State();

  // "rank 1 (world rank 3) of group 'dp' (world ranks [1, 3])"
  std::string who() const {
    return str_cat("rank ", rank, " (world rank ", world_ranks[rank], ") of group '", name, "' (world ranks ",
                   list_str(world_ranks), ")");
  }
  std::string others() const {
    std::vector<int> out;
    for (int r = 0; r < size; ++r)
      if (r != rank) out.push_back(world_ranks[r]);
    return list_str(out);
  }

  // Aborts the NCCL communicator (the job cannot go on) and throws CommError.
  [[noreturn]] void fail(const std::string& message) {
    if (comm) ncclCommAbort(comm);  // its own failure changes nothing: we are failing already
    comm = nullptr;
    aborted = message;
    throw CommError(message);
  }

  void require_alive() const {
    if (!aborted.empty())
      throw CommError(str_cat("NCCL ", who(), ": the communicator was aborted after an earlier failure: ", aborted));
  }

  // After a call to a non-blocking communicator: polls until NCCL has finished the call's host
  // side (ncclInProgress), within `deadline`.
  void settle(ncclResult_t result, const std::string& what, Clock::time_point deadline) {
    Backoff backoff;
    while (result == ncclInProgress) {
      if (Clock::now() > deadline)
        fail(str_cat("NCCL ", who(), ": ", what, " did not finish within ", options.timeout.count(),
                     " ms (NCCL waits for every member to connect, and cannot tell which of world ranks ", others(),
                     " is missing); the NCCL communicator was aborted"));
      backoff.pause();
      ncclResult_t query = ncclCommGetAsyncError(comm, &result);
      if (query != ncclSuccess) result = query;
    }
    if (result != ncclSuccess) fail(str_cat("NCCL ", who(), ": ", what, " failed: ", nccl_error(result, comm)));
  }

  // The prefix of argument errors: "NCCL all_reduce on group 'dp': ".
  std::string in(const char* collective) const { return str_cat("NCCL ", collective, " on group '", name, "': "); }

  void check_tensor(const Tensor& t, const char* collective, const char* role) const {
    BVLLM_REQUIRE(t.defined(), in(collective), role, " is undefined");
    BVLLM_REQUIRE(t.device().is_cuda() && t.device().index == device, in(collective), role, " is on ", t.device().str(),
                  ", this communicator serves cuda:", device, " (CPU tensors go through MpiCommunicator)");
    BVLLM_REQUIRE(t.is_contiguous(), in(collective), role, " ", shape_str(t.shape()),
                  " is not contiguous (NCCL reads and writes flat memory: pass .contiguous())");
  }
  void check_reducible(const Tensor& t, const char* collective) const {
    BVLLM_REQUIRE(t.dtype() != DType::Bool, in(collective),
                  "reductions are defined for f32, f64, bf16, f16, i32, i64 and u8, not bool");
  }
  void check_rank(int r, const char* collective, const char* role) const {
    BVLLM_REQUIRE(r >= 0 && r < size, in(collective), role, " ", r, " is not a rank of this group of ", size);
  }

  // Registers an operation: the caller's stream at this point is what it must start after, and
  // its tensors are in use on the communicator's stream until it completes.
  // `details` go into messages: "all_reduce #7 (1024 f32 elements, sum)".
  std::shared_ptr<NcclOp> make_op(const char* collective, const std::string& details, std::vector<Tensor> tensors,
                                  std::function<ncclResult_t(ncclComm_t, cudaStream_t)> launch) {
    require_alive();
    DeviceGuard guard(device);
    auto op = std::make_shared<NcclOp>();
    op->what = str_cat(collective, " #", sequence++, " (", details, ")");
    op->start = std::make_unique<cuda::Event>();
    op->start->record(cuda::current_stream(device));
    for (const Tensor& t : tensors)
      cuda::CachingAllocator::for_device(device).record_stream(t.storage()->data(), stream->get());
    op->tensors = std::move(tensors);
    op->launch = std::move(launch);
    return op;
  }

  // Launches `ops` in one NCCL group on the communicator's stream, after each one's start event.
  void launch(const std::vector<std::shared_ptr<NcclOp>>& ops) {
    if (ops.empty()) return;
    require_alive();
    DeviceGuard guard(device);
    const std::string what = ops.size() == 1 ? ops[0]->what : str_cat(ops.front()->what, " .. ", ops.back()->what);
    const Clock::time_point deadline = Clock::now() + options.timeout;
    for (const auto& op : ops) BVLLM_CUDA_CHECK(cudaStreamWaitEvent(stream->get(), op->start->get(), 0));
    ncclResult_t result = ncclGroupStart();
    if (result != ncclSuccess) fail(str_cat("NCCL ", who(), ": ncclGroupStart failed: ", nccl_error(result, comm)));
    for (const auto& op : ops) {
      result = op->launch(comm, stream->get());
      op->launch = nullptr;
      if (result != ncclSuccess && result != ncclInProgress) {
        ncclGroupEnd();
        fail(str_cat("NCCL ", who(), ": ", op->what, " failed to launch: ", nccl_error(result, comm)));
      }
    }
    settle(ncclGroupEnd(), what, deadline);
    auto done = std::make_shared<cuda::Event>();
    done->record(stream->get());
    for (const auto& op : ops) op->done = done;
  }

  // Launches the pending point-to-point operations (before any collective, and when a Work is
  // tested or waited for), so every rank issues them in the order they were posted.
  void flush() {
    std::vector<std::shared_ptr<NcclOp>> ops;
    ops.swap(pending);
    launch(ops);
  }

  std::unique_ptr<Work> collective(std::shared_ptr<NcclOp> op);
  std::unique_ptr<Work> point_to_point(std::shared_ptr<NcclOp> op);

  // Host-side completion of one operation, with the timeout; see Work::wait.
  void wait(NcclOp& op) {
    require_alive();
    if (!op.done) flush();
    DeviceGuard guard(device);
    const Clock::time_point deadline = Clock::now() + options.timeout;
    Backoff backoff;
    while (!op.done->done()) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t query = ncclCommGetAsyncError(comm, &state);
      if (query != ncclSuccess) state = query;
      if (state != ncclSuccess && state != ncclInProgress)
        fail(str_cat("NCCL ", who(), ": ", op.what, " failed: ", nccl_error(state, comm)));
      if (Clock::now() > deadline)
        fail(str_cat("NCCL ", who(), ": ", op.what, " did not complete within ", options.timeout.count(),
                     " ms; NCCL cannot tell which members had not reached it, so any of world ranks ", others(),
                     " may be missing or stalled (or this rank's own earlier GPU work is); the NCCL communicator was "
                     "aborted"));
      backoff.pause();
    }
    // Kernels the caller queues from now on see the result.
    BVLLM_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(device), op.done->get(), 0));
  }

  bool test(NcclOp& op) {
    require_alive();
    if (!op.done) flush();
    DeviceGuard guard(device);
    if (op.done->done()) return true;
    ncclResult_t state = ncclSuccess;
    ncclResult_t query = ncclCommGetAsyncError(comm, &state);
    if (query != ncclSuccess) state = query;
    if (state != ncclSuccess && state != ncclInProgress)
      fail(str_cat("NCCL ", who(), ": ", op.what, " failed: ", nccl_error(state, comm)));
    return false;
  }
};

namespace {

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCommunicator::State> state, std::shared_ptr<NcclOp> op)
      : state_(std::move(state)), op_(std::move(op)) {}

  bool test() override {
    if (finished_) return true;
    if (!state_->test(*op_)) return false;
    finish();
    return true;
  }

  void wait() override {
    if (finished_) return;
    state_->wait(*op_);
    finish();
  }

 private:
  // Complete: the tensors may go back to the allocator.
  void finish() {
    finished_ = true;
    op_->tensors.clear();
  }

  std::shared_ptr<NcclCommunicator::State> state_;
  std::shared_ptr<NcclOp> op_;
  bool finished_ = false;
};

}  // namespace

std::unique_ptr<Work> NcclCommunicator::State::collective(std::shared_ptr<NcclOp> op) {
  flush();  // posted sends and receives go first, as they were issued
  launch({op});
  return std::make_unique<NcclWork>(shared_from_this(), std::move(op));
}

std::unique_ptr<Work> NcclCommunicator::State::point_to_point(std::shared_ptr<NcclOp> op) {
  pending.push_back(op);
  return std::make_unique<NcclWork>(shared_from_this(), std::move(op));
}

NcclCommunicator::State::~State() {
  if (!aborted.empty() || !comm) return;
  // Let the operations in flight finish (bounded by the timeout), then take the communicator down
  // cleanly: ncclCommFinalize flushes it, ncclCommDestroy frees it. If that does not happen in
  // time, abort: a destructor must not hang the job.
  try {
    flush();
    DeviceGuard guard(device);
    const Clock::time_point deadline = Clock::now() + options.timeout;
    Backoff backoff;
    for (;;) {
      cudaError_t status = cudaStreamQuery(stream->get());
      if (status == cudaSuccess) break;
      if (status != cudaErrorNotReady) BVLLM_CUDA_CHECK(status);
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm, &state);
      if (state != ncclSuccess && state != ncclInProgress)
        fail(str_cat("NCCL ", who(),
                     ": an operation failed before the communicator was destroyed: ", nccl_error(state, comm)));
      if (Clock::now() > deadline)
        fail(str_cat("NCCL ", who(), ": operations still in flight after ", options.timeout.count(),
                     " ms when the communicator was destroyed"));
      backoff.pause();
    }
    settle(ncclCommFinalize(comm), "finalizing the communicator", deadline);
    ncclCommDestroy(comm);
    comm = nullptr;
  } catch (const std::exception& e) {
    LOG(ERROR) << e.what();
    if (comm) ncclCommAbort(comm);
    comm = nullptr;
  }
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<State> state) : state_(std::move(state)) {}
NcclCommunicator::~NcclCommunicator() = default;  // the State goes when the last Work does

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(MpiCommunicator& group, int device,
                                                           const CommOptions& options) {
  const int devices = cuda::device_count();
  BVLLM_REQUIRE(device >= 0 && device < devices, "NcclCommunicator for group '", group.name(), "': CUDA device ",
                device, " does not exist (this machine has ", devices, ")");
  // NCCL's rendezvous: rank 0 makes the id, the group's CPU transport carries it to the others.
  // One more byte says whether rank 0 got one, so a failure there ends every member's create()
  // instead of leaving them in the broadcast.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  std::string id_error;
  if (group.rank() == 0) {
    ncclResult_t result = ncclGetUniqueId(&id);
    if (result != ncclSuccess) id_error = nccl_error(result, nullptr);
  }
  Tensor bytes = Tensor::empty({static_cast<int64_t>(sizeof id) + 1}, DType::U8);
  std::memcpy(bytes.raw_data(), &id, sizeof id);
  static_cast<uint8_t*>(bytes.raw_data())[sizeof id] = id_error.empty() ? 1 : 0;
  group.broadcast(bytes, 0);
  if (static_cast<const uint8_t*>(bytes.raw_data())[sizeof id] == 0)
    throw CommError(str_cat("NcclCommunicator for group '", group.name(), "': ncclGetUniqueId failed on its rank 0",
                            id_error.empty() ? "" : ": ", id_error));
  std::memcpy(&id, bytes.raw_data(), sizeof id);

  auto state = std::make_shared<State>();
  state->rank = group.rank();
  state->size = group.size();
  state->device = device;
  state->name = group.name();
  state->world_ranks = group.world_ranks();
  state->options = options;
  // Kernels of this process run on `device` from now on (the NCCL convention).
  BVLLM_CUDA_CHECK(cudaSetDevice(device));
  state->stream = std::make_unique<cuda::Stream>(device);

  // Non-blocking: no NCCL call can hang the host, so a missing member becomes a timeout.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.commName = state->name.c_str();
  const Clock::time_point deadline = Clock::now() + options.timeout;
  ncclResult_t result = ncclCommInitRankConfig(&state->comm, state->size, id, state->rank, &config);
  if (result != ncclSuccess && result != ncclInProgress)
    state->fail(str_cat("NCCL ", state->who(), ": ncclCommInitRankConfig failed: ", nccl_error(result, state->comm)));
  state->settle(result, "creating the NCCL communicator", deadline);

  state->barrier_buffer = Tensor::empty({1}, DType::I32, Device::cuda(device));
  state->barrier_buffer.zero_();
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(state)));
}

int NcclCommunicator::device() const { return state_->device; }
int64_t NcclCommunicator::sequence() const { return state_->sequence; }
void NcclCommunicator::set_timeout(std::chrono::milliseconds timeout) { state_->options.timeout = timeout; }
int NcclCommunicator::rank() const { return state_->rank; }
int NcclCommunicator::size() const { return state_->size; }
const std::string& NcclCommunicator::name() const { return state_->name; }
const std::vector<int>& NcclCommunicator::world_ranks() const { return state_->world_ranks; }

std::unique_ptr<Work> NcclCommunicator::all_reduce_async(Tensor& tensor, ReduceOp op) {
  State& s = *state_;
  s.check_tensor(tensor, "all_reduce", "tensor");
  s.check_reducible(tensor, "all_reduce");
  void* data = tensor.raw_data();
  const size_t count = static_cast<size_t>(tensor.numel());
  const ncclDataType_t dtype = nccl_dtype(tensor.dtype());
  return s.collective(s.make_op("all_reduce",
                                str_cat(count, " ", dtype_name(tensor.dtype()), " elements, ", op_name(op)), {tensor},
                                [=](ncclComm_t comm, cudaStream_t stream) {
                                  return ncclAllReduce(data, data, count, dtype, nccl_op(op), comm, stream);
                                }));
}

namespace {

bool overlaps(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.raw_data());
  const char* pb = static_cast<const char*>(b.raw_data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes() && a.nbytes() > 0 && b.nbytes() > 0;
}

}  // namespace

std::unique_ptr<Work> NcclCommunicator::reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op) {
  State& s = *state_;
  s.check_tensor(input, "reduce_scatter", "input");
  s.check_tensor(output, "reduce_scatter", "output");
  s.check_reducible(input, "reduce_scatter");
  BVLLM_REQUIRE(input.dtype() == output.dtype(), s.in("reduce_scatter"), "input is ", dtype_name(input.dtype()),
                " but output is ", dtype_name(output.dtype()));
  BVLLM_REQUIRE(input.numel() % s.size == 0, s.in("reduce_scatter"), "input has ", input.numel(),
                " elements, which the group's ", s.size, " members do not divide (pad to a multiple)");
  BVLLM_REQUIRE(output.numel() * s.size == input.numel(), s.in("reduce_scatter"), "output has ", output.numel(),
                " elements, expected input's ", input.numel(), " / ", s.size, " members = ", input.numel() / s.size);
  const size_t count = static_cast<size_t>(output.numel());
  // NCCL works in place only with the output at this rank's chunk of the input.
  const char* own_chunk = static_cast<const char*>(input.raw_data()) + s.rank * output.nbytes();
  BVLLM_REQUIRE(!overlaps(input, output) || output.raw_data() == own_chunk, s.in("reduce_scatter"),
                "output overlaps input other than as this rank's chunk ", s.rank, " (in place)");
  const void* send = input.raw_data();
  void* recv = output.raw_data();
  const ncclDataType_t dtype = nccl_dtype(input.dtype());
  return s.collective(s.make_op(
      "reduce_scatter",
      str_cat(input.numel(), " ", dtype_name(input.dtype()), " elements into ", count, " per member, ", op_name(op)),
      {input, output}, [=](ncclComm_t comm, cudaStream_t stream) {
        return ncclReduceScatter(send, recv, count, dtype, nccl_op(op), comm, stream);
      }));
}

std::unique_ptr<Work> NcclCommunicator::all_gather_async(const Tensor& input, Tensor& output) {
  State& s = *state_;
  s.check_tensor(input, "all_gather", "input");
  s.check_tensor(output, "all_gather", "output");
  BVLLM_REQUIRE(input.dtype() == output.dtype(), s.in("all_gather"), "input is ", dtype_name(input.dtype()),
                " but output is ", dtype_name(output.dtype()));
  BVLLM_REQUIRE(output.numel() == input.numel() * s.size, s.in("all_gather"), "output has ", output.numel(),
                " elements, expected the group's ", s.size, " members x input's ", input.numel(), " = ",
                input.numel() * s.size);
  const size_t count = static_cast<size_t>(input.numel());
  // NCCL works in place only with the input at this rank's chunk of the output.
  const char* own_chunk = static_cast<const char*>(output.raw_data()) + s.rank * input.nbytes();
  BVLLM_REQUIRE(!overlaps(input, output) || input.raw_data() == own_chunk, s.in("all_gather"),
                "input overlaps output other than as this rank's chunk ", s.rank, " (in place)");
  const void* send = input.raw_data();
  void* recv = output.raw_data();
  const ncclDataType_t dtype = nccl_dtype(input.dtype());
  return s.collective(s.make_op(
      "all_gather", str_cat(count, " ", dtype_name(input.dtype()), " elements per member"), {input, output},
      [=](ncclComm_t comm, cudaStream_t stream) { return ncclAllGather(send, recv, count, dtype, comm, stream); }));
}

std::unique_ptr<Work> NcclCommunicator::broadcast_async(Tensor& tensor, int root) {
  State& s = *state_;
  s.check_tensor(tensor, "broadcast", "tensor");
  s.check_rank(root, "broadcast", "root");
  void* data = tensor.raw_data();
  const size_t count = static_cast<size_t>(tensor.numel());
  const ncclDataType_t dtype = nccl_dtype(tensor.dtype());
  return s.collective(s.make_op("broadcast",
                                str_cat(count, " ", dtype_name(tensor.dtype()), " elements from rank ", root), {tensor},
                                [=](ncclComm_t comm, cudaStream_t stream) {
                                  return ncclBroadcast(data, data, count, dtype, root, comm, stream);
                                }));
}

std::unique_ptr<Work> NcclCommunicator::send_async(const Tensor& tensor, int peer) {
  State& s = *state_;
  s.check_tensor(tensor, "send", "tensor");
  s.check_rank(peer, "send", "peer");
  BVLLM_REQUIRE(peer != s.rank, s.in("send"), "rank ", peer, " cannot send to itself over NCCL (copy instead)");
  const void* data = tensor.raw_data();
  const size_t count = static_cast<size_t>(tensor.numel());
  const ncclDataType_t dtype = nccl_dtype(tensor.dtype());
  return s.point_to_point(s.make_op(
      "send", str_cat(count, " ", dtype_name(tensor.dtype()), " elements to rank ", peer), {tensor},
      [=](ncclComm_t comm, cudaStream_t stream) { return ncclSend(data, count, dtype, peer, comm, stream); }));
}

std::unique_ptr<Work> NcclCommunicator::recv_async(Tensor& tensor, int peer) {
  State& s = *state_;
  s.check_tensor(tensor, "recv", "tensor");
  s.check_rank(peer, "recv", "peer");
  BVLLM_REQUIRE(peer != s.rank, s.in("recv"), "rank ", peer, " cannot receive from itself over NCCL (copy instead)");
  void* data = tensor.raw_data();
  const size_t count = static_cast<size_t>(tensor.numel());
  const ncclDataType_t dtype = nccl_dtype(tensor.dtype());
  return s.point_to_point(s.make_op(
      "recv", str_cat(count, " ", dtype_name(tensor.dtype()), " elements from rank ", peer), {tensor},
      [=](ncclComm_t comm, cudaStream_t stream) { return ncclRecv(data, count, dtype, peer, comm, stream); }));
}

void NcclCommunicator::barrier() { all_reduce_async(state_->barrier_buffer)->wait(); }

}  // namespace bvllm::parallel
