#include "runtime/ops/common.h"

namespace bvllm::ops::detail {

void check_defined(const Tensor& t, const char* op, const char* what) {
  BVLLM_REQUIRE(t.defined(), op, ": ", what, " is undefined");
}

void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* op) {
  check_defined(a, op, "first operand");
  check_defined(b, op, "second operand");
  BVLLM_REQUIRE(a.dtype() == b.dtype(), op, ": dtypes differ (", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()),
                "); cast one first");
  BVLLM_REQUIRE(a.device() == b.device(), op, ": devices differ (", a.device().str(), " and ", b.device().str(), ")");
}

void check_floating(const Tensor& t, const char* op) {
  check_defined(t, op, "input");
  BVLLM_REQUIRE(is_floating(t.dtype()), op, ": expected a floating-point tensor, got ", dtype_name(t.dtype()));
}

void require_cpu(Device device, const char* op) {
  BVLLM_REQUIRE(device.is_cpu(), op, ": tensor on ", device.str(), " but bvllm was built without CUDA");
}

}  // namespace bvllm::ops::detail
