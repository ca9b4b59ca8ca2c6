// Every CUDA runtime call is checked; a failure names the call, the file and the line.
#pragma once

#include <cuda_runtime.h>

#include "runtime/error.h"

#define BVLLM_CUDA_CHECK(call)                                                                                       \
  do {                                                                                                               \
    cudaError_t bvllm_status_ = (call);                                                                              \
    if (bvllm_status_ != cudaSuccess)                                                                                \
      throw ::bvllm::Error(                                                                                          \
          ::bvllm::str_cat(#call, " failed at ", __FILE__, ":", __LINE__, ": ", cudaGetErrorString(bvllm_status_))); \
  } while (0)
