// GEMMs through cuBLASLt: gemm_batched for matmul, gemm_bias_act for fused linear layers.
//
// Every call describes its problem in row-major terms (out[M, N] = A[M, K] B[K, N], each operand
// row- or column-major with a leading dimension and a batch stride), looks up a cached plan (matmul
// descriptor, three layouts and the heuristic's algorithm) keyed by everything that shaped that
// choice, and runs it on the current stream with that stream's workspace. Row-major becomes
// cuBLASLt's column-major by swapping the operands (research/cuda-backend.md §1.2):
//   out^T[N, M] = B^T[N, K] A^T[K, M], with D = out seen column-major as N x M (ld N).
// A row-major operand is then read without a transpose, a column-major one with CUBLAS_OP_T.
//
// Precision: bf16/f16 accumulate in f32 (CUBLAS_COMPUTE_32F), f32 runs on TF32 tensor cores
// (CUBLAS_COMPUTE_32F_FAST_TF32: ~1e-3 relative error against an f32 CPU product), f64 in f64.
#include <cublasLt.h>
#include <glog/logging.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "runtime/cuda/blas_lt.h"  // defines: BVLLM_CUBLAS_CHECK, blas_lt_handle, gemm_bias_act
#include "runtime/cuda/kernels.h"  // defines: gemm_batched
#include "runtime/cuda/stream.h"   // defines: current_stream, BVLLM_CUDA_CHECK
#include "runtime/tensor.h"

namespace bvllm::cuda {

namespace {

// Makes `device` current while in scope (handle creation and allocation act on the current device).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    BVLLM_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) BVLLM_CUDA_CHECK(cudaSetDevice(device));
    restore_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);  // destructors do not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// --- handles and workspaces ------------------------------------------------------------------

class BlasLtHandle {
 public:
  explicit BlasLtHandle(int device) {
    DeviceGuard guard(device);
    BVLLM_CUBLAS_CHECK(cublasLtCreate(&handle_));
  }
  ~BlasLtHandle() {
    if (handle_) cublasLtDestroy(handle_);
  }
  BlasLtHandle(const BlasLtHandle&) = delete;
  BlasLtHandle& operator=(const BlasLtHandle&) = delete;
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

// Device memory that lives as long as the object. The one place gemm.cu allocates: the caching
// allocator (research §4) takes over here once it exists.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : bytes_(bytes) {
    DeviceGuard guard(device);
    BVLLM_CUDA_CHECK(cudaMalloc(&data_, bytes));
  }
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);  // may run after the runtime unloads at exit: ignore the status
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  void* data_ = nullptr;
};

size_t workspace_bytes(int device) {
  int major = 0;
  BVLLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return (major >= 9 ? 32 : 4) << 20;
}

// --- problem description ---------------------------------------------------------------------

// One operand in row-major terms: a [rows, cols] matrix per batch entry, stored row-major
// (element (i, j) at i * ld + j) or column-major (at i + j * ld).
struct Operand {
  const void* data;
  bool col_major;
  int64_t ld;
  int64_t batch_stride;  // elements; 0 broadcasts one matrix over the batch
};

// Reads the last two dims of a [rows, cols] or [batch, rows, cols] view. A view that is neither
// row- nor column-major (possible for degenerate expands) is copied contiguous into `keep`.
Operand operand_of(const Tensor& t, Tensor& keep) {
  const int64_t rank = t.dim();
  CHECK(rank == 2 || rank == 3) << "gemm operand must be 2-D or 3-D, got " << shape_str(t.shape());
  const int64_t rows = t.shape()[rank - 2], cols = t.shape()[rank - 1];
  const int64_t sr = t.strides()[rank - 2], sc = t.strides()[rank - 1];
  const int64_t bs = rank == 3 && t.shape()[0] > 1 ? t.strides()[0] : 0;
  // A size-1 dim has a meaningless stride: choose the leading dimension cuBLASLt accepts.
  if ((sc == 1 || cols == 1) && (rows == 1 || sr >= std::max<int64_t>(cols, 1)))
    return {t.raw_data(), false, rows == 1 ? std::max<int64_t>(cols, 1) : sr, bs};
  if ((sr == 1 || rows == 1) && (cols == 1 || sc >= std::max<int64_t>(rows, 1)))
    return {t.raw_data(), true, cols == 1 ? std::max<int64_t>(rows, 1) : sc, bs};
  keep = t.contiguous();
  return {keep.raw_data(), false, std::max<int64_t>(cols, 1), rank == 3 && t.shape()[0] > 1 ? rows * cols : 0};
}

struct Problem {
  DType dtype;
  int64_t batch, m, n, k;
  Operand a, b;
  void* out;  // contiguous [batch, m, n]
  GemmEpilogue epilogue = GemmEpilogue::kNone;
  void* bias = nullptr;  // [n] in, or [m] out for kBGradB
  void* aux = nullptr;   // [m, n] contiguous
};

struct Types {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;
};
Types types_of(DType dtype) {
  switch (dtype) {
    case DType::BF16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::F16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::F32: return {CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F};
    case DType::F64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F};
    default: throw Error(str_cat("gemm: expected a floating dtype, got ", dtype_name(dtype)));
  }
}

cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::kNone: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::kBias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::kGeluAuxBias: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case GemmEpilogue::kDGelu: return CUBLASLT_EPILOGUE_DGELU;
    case GemmEpilogue::kBGradB: return CUBLASLT_EPILOGUE_BGRADB;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

// The alignment cuBLASLt may assume for a pointer that steps by `batch_stride_bytes` per batch
// entry: the largest power of two up to 256 dividing both (research §1.4).
uint32_t alignment(const void* p, int64_t batch_stride_bytes = 0) {
  uint64_t x = reinterpret_cast<uintptr_t>(p) | 256u | static_cast<uint64_t>(batch_stride_bytes);
  return static_cast<uint32_t>(x & (~x + 1));
}

std::string problem_str(const Problem& p) {
  auto op = [](const char* name, int64_t r, int64_t c, const Operand& o) {
    return str_cat(name, "[", r, ", ", c, "] (", o.col_major ? "column" : "row", "-major, ld ", o.ld, ", batch stride ",
                   o.batch_stride, ", ", alignment(o.data), "-byte aligned)");
  };
  return str_cat(dtype_name(p.dtype), " batch ", p.batch, ": ", op("A", p.m, p.k, p.a), " @ ", op("B", p.k, p.n, p.b),
                 " -> out[", p.m, ", ", p.n, "], epilogue ", epilogue_name(p.epilogue));
}

// --- plans -----------------------------------------------------------------------------------

struct LtDestroy {
  void operator()(cublasLtMatmulDesc_t d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayout_t l) const { cublasLtMatrixLayoutDestroy(l); }
  void operator()(cublasLtMatmulPreference_t p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, LtDestroy>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LtDestroy>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, LtDestroy>;

struct Plan {
  MatmulDesc desc;
  Layout a, b, d;  // cuBLASLt's A (our B), B (our A), and C = D (our out, beta = 0)
  cublasLtMatmulAlgo_t algo;
};

// Everything the descriptors and the heuristic's choice depend on.
using PlanKey = std::array<int64_t, 18>;
struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (int64_t v : key) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

PlanKey key_of(int device, const Problem& p) {
  const int64_t es = static_cast<int64_t>(dtype_size(p.dtype));
  return {device,
          static_cast<int64_t>(p.dtype),
          static_cast<int64_t>(p.epilogue),
          p.batch,
          p.m,
          p.n,
          p.k,
          p.a.col_major,
          p.a.ld,
          p.a.batch_stride,
          p.b.col_major,
          p.b.ld,
          p.b.batch_stride,
          alignment(p.a.data, p.a.batch_stride * es),
          alignment(p.b.data, p.b.batch_stride * es),
          alignment(p.out, p.batch > 1 ? p.m * p.n * es : 0),
          p.bias ? alignment(p.bias) : 0,
          p.aux ? alignment(p.aux) : 0};
}

template <typename V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  BVLLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

// A column-major rows x cols layout with leading dimension ld, batched.
Layout make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t batch_stride) {
  cublasLtMatrixLayout_t l = nullptr;
  BVLLM_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&l, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  Layout layout(l);
  const int32_t count = static_cast<int32_t>(batch);
  BVLLM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  BVLLM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride,
                                                      sizeof(batch_stride)));
  return layout;
}

// The epilogue pointers change per call; their values (alignment) also steer the heuristic.
void set_epilogue_pointers(cublasLtMatmulDesc_t desc, const Problem& p) {
  if (p.bias) set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
  if (p.aux) set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, p.aux);
}

Plan make_plan(int device, cublasLtHandle_t handle, size_t workspace, const Problem& p) {
  const Types t = types_of(p.dtype);
  cublasLtMatmulDesc_t raw = nullptr;
  BVLLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw, t.compute, t.scale));
  Plan plan{MatmulDesc(raw), nullptr, nullptr, nullptr, {}};
  cublasLtMatmulDesc_t desc = plan.desc.get();

  // Swapped operands: cuBLASLt's A is our B (n x k after its op), its B is our A (k x m).
  const int32_t trans_a = p.b.col_major ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t trans_b = p.a.col_major ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSA, trans_a);
  set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSB, trans_b);
  plan.a = p.b.col_major ? make_layout(t.data, p.k, p.n, p.b.ld, p.batch, p.b.batch_stride)
                         : make_layout(t.data, p.n, p.k, p.b.ld, p.batch, p.b.batch_stride);
  plan.b = p.a.col_major ? make_layout(t.data, p.m, p.k, p.a.ld, p.batch, p.a.batch_stride)
                         : make_layout(t.data, p.k, p.m, p.a.ld, p.batch, p.a.batch_stride);
  plan.d = make_layout(t.data, p.n, p.m, p.n, p.batch, p.batch > 1 ? p.m * p.n : 0);

  if (p.epilogue != GemmEpilogue::kNone) {
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(lt_epilogue(p.epilogue)));
    set_epilogue_pointers(desc, p);
    // In D's column-major terms the aux matrix is n x m with leading dimension n.
    if (p.aux) set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<int64_t>(p.n));
  }

  cublasLtMatmulPreference_t raw_pref = nullptr;
  BVLLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
  Preference pref(raw_pref);
  const uint64_t ws = workspace;
  BVLLM_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const int64_t es = static_cast<int64_t>(dtype_size(p.dtype));
  const uint32_t align[4] = {alignment(p.b.data, p.b.batch_stride * es), alignment(p.a.data, p.a.batch_stride * es),
                             alignment(p.out, p.batch > 1 ? p.m * p.n * es : 0),
                             alignment(p.out, p.batch > 1 ? p.m * p.n * es : 0)};
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    BVLLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_pref, align_attr[i], &align[i], sizeof(align[i])));

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, desc, plan.a.get(), plan.b.get(), plan.d.get(),
                                                         plan.d.get(), raw_pref, 1, &result, &returned);
  // NOT_SUPPORTED is how the heuristic says "no kernel for this combination", like returned == 0.
  if (status != CUBLAS_STATUS_NOT_SUPPORTED) BVLLM_CUBLAS_CHECK(status);
  BVLLM_REQUIRE(status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS,
                "gemm: cuBLASLt has no algorithm on cuda:", device, " for ", problem_str(p));
  plan.algo = result.algo;
  return plan;
}

// Plans per thread: a plan's descriptor gets this call's epilogue pointers written into it, and
// cached cuBLASLt objects are not promised to be safe to share across threads (PyTorch keeps its
// cuDNN plans thread_local for the same reason, research §2.8).
const Plan& plan_for(int device, cublasLtHandle_t handle, size_t workspace, const Problem& p) {
  thread_local std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
  const PlanKey key = key_of(device, p);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(device, handle, workspace, p)).first;
  return it->second;
}

void run(const Problem& p, int device) {
  BVLLM_REQUIRE(p.batch <= INT32_MAX, "gemm: batch ", p.batch, " exceeds cuBLASLt's int32 batch count");
  cudaStream_t stream = current_stream(device);
  cublasLtHandle_t handle = blas_lt_handle(device);
  const BlasLtWorkspace ws = blas_lt_workspace(device, stream);
  const Plan& plan = plan_for(device, handle, ws.bytes, p);
  if (p.epilogue != GemmEpilogue::kNone) set_epilogue_pointers(plan.desc.get(), p);
  // alpha = 1, beta = 0 in the scale type: f64 for f64, f32 otherwise.
  const double one64 = 1, zero64 = 0;
  const float one32 = 1, zero32 = 0;
  const bool f64 = p.dtype == DType::F64;
  const void* alpha = f64 ? static_cast<const void*>(&one64) : static_cast<const void*>(&one32);
  const void* beta = f64 ? static_cast<const void*>(&zero64) : static_cast<const void*>(&zero32);
  BVLLM_CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc.get(), alpha, p.b.data, plan.a.get(), p.a.data, plan.b.get(),
                                    beta, p.out, plan.d.get(), p.out, plan.d.get(), &plan.algo, ws.data, ws.bytes,
                                    stream));
}

}  // namespace

cublasLtHandle_t blas_lt_handle(int device) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<BlasLtHandle>> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto& h = handles[device];
  if (!h) h = std::make_unique<BlasLtHandle>(device);
  return h->get();
}

// Keyed by the stream handle: a stream destroyed while its GEMMs still run and a new one created
// at the same address would share a workspace. bvllm's streams live for the process, so this does
// not arise; revisit if short-lived streams appear.
BlasLtWorkspace blas_lt_workspace(int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, std::unique_ptr<DeviceBuffer>> buffers;
  std::lock_guard<std::mutex> lock(mutex);
  auto& b = buffers[{device, stream}];
  if (!b) b = std::make_unique<DeviceBuffer>(device, workspace_bytes(device));
  return {b->data(), b->bytes()};
}

const char* epilogue_name(GemmEpilogue epilogue) {
  switch (epilogue) {
    case GemmEpilogue::kNone: return "none";
    case GemmEpilogue::kBias: return "bias";
    case GemmEpilogue::kGeluAuxBias: return "gelu_aux_bias";
    case GemmEpilogue::kDGelu: return "dgelu";
    case GemmEpilogue::kBGradB: return "bgradb";
  }
  return "?";
}

void gemm_batched(const Tensor& a, const Tensor& b, Tensor& out) {
  CHECK(a.dim() == 3 && b.dim() == 3 && out.dim() == 3)
      << "gemm_batched wants [batch, rows, cols] views, got " << shape_str(a.shape()) << ", " << shape_str(b.shape())
      << ", " << shape_str(out.shape());
  CHECK(out.is_contiguous()) << "gemm_batched: out must be contiguous, strides " << shape_str(out.strides());
  CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype())
      << "gemm_batched: dtypes " << dtype_name(a.dtype()) << ", " << dtype_name(b.dtype()) << " -> "
      << dtype_name(out.dtype());
  const int64_t batch = out.shape()[0], m = out.shape()[1], n = out.shape()[2], k = a.shape()[2];
  CHECK(a.shape()[0] == batch && b.shape()[0] == batch && a.shape()[1] == m && b.shape()[1] == k && b.shape()[2] == n)
      << "gemm_batched: " << shape_str(a.shape()) << " @ " << shape_str(b.shape()) << " -> " << shape_str(out.shape());
  if (out.numel() == 0) return;
  const int device = out.device().index;
  if (k == 0) {  // an empty sum: cuBLASLt rejects k = 0
    BVLLM_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), current_stream(device)));
    return;
  }
  Tensor keep_a, keep_b;
  Problem p{out.dtype(), batch, m, n, k, operand_of(a, keep_a), operand_of(b, keep_b), out.raw_data()};
  run(p, device);
}

void gemm_bias_act(const Tensor& a, const Tensor& b, Tensor& out, GemmEpilogue epilogue, const Tensor& bias,
                   const Tensor& aux) {
  CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2 && out.is_contiguous())
      << "gemm_bias_act: " << shape_str(a.shape()) << " @ " << shape_str(b.shape()) << " -> " << shape_str(out.shape());
  const int64_t m = out.shape()[0], n = out.shape()[1], k = a.shape()[1];
  CHECK(a.shape()[0] == m && b.shape()[0] == k && b.shape()[1] == n && k > 0)
      << "gemm_bias_act: " << shape_str(a.shape()) << " @ " << shape_str(b.shape()) << " -> " << shape_str(out.shape());
  CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype()) << "gemm_bias_act: mixed dtypes";
  const bool needs_bias =
      epilogue == GemmEpilogue::kBias || epilogue == GemmEpilogue::kGeluAuxBias || epilogue == GemmEpilogue::kBGradB;
  const bool needs_aux = epilogue == GemmEpilogue::kGeluAuxBias || epilogue == GemmEpilogue::kDGelu;
  if (needs_bias) {
    const int64_t len = epilogue == GemmEpilogue::kBGradB ? m : n;
    CHECK(bias.defined() && bias.dim() == 1 && bias.shape()[0] == len && bias.is_contiguous() &&
          bias.dtype() == out.dtype())
        << "gemm_bias_act(" << epilogue_name(epilogue) << "): bias must be contiguous [" << len << "] "
        << dtype_name(out.dtype());
  }
  if (needs_aux) {
    CHECK(aux.defined() && aux.shape() == out.shape() && aux.is_contiguous() && aux.dtype() == out.dtype())
        << "gemm_bias_act(" << epilogue_name(epilogue) << "): aux must be contiguous " << shape_str(out.shape());
    BVLLM_REQUIRE(n % 8 == 0, "gemm_bias_act(", epilogue_name(epilogue), "): cuBLASLt needs the aux leading dim (", n,
                  ") to be a multiple of 8");
  }
  if (out.numel() == 0) return;
  Tensor keep_a, keep_b;
  Problem p{out.dtype(), 1, m, n, k, operand_of(a, keep_a), operand_of(b, keep_b), out.raw_data(), epilogue};
  p.bias = needs_bias ? bias.raw_data() : nullptr;
  p.aux = needs_aux ? aux.raw_data() : nullptr;
  run(p, out.device().index);
}

}  // namespace bvllm::cuda
