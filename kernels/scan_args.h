// SelectiveScan's arguments, shared by every kernel of the op: the CPU paths (scan_kernel.h), the
// CUDA kernel (scan_cuda.cuh) and the op itself (selective_scan.cc), which fills them from the
// onnxruntime inputs. Pointers are host memory for the CPU kernels and device memory for CUDA.
#pragma once

#include <cstdint>

namespace mvgpt {
namespace scan {

struct ScanArgs {
  int64_t batch, dim, length, state;
  const float *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
  bool softplus;
  float* y;
};

// The CUDA kernel (selective_scan_cuda.cu, built when the library is built with CUDA): runs `a`
// on `stream` (a cudaStream_t; null: the default stream). Returns null when launched, else what
// went wrong (a static string).
const char* launch_scan_cuda(const ScanArgs& a, void* stream);

// Whether the CUDA kernel can run here: a GPU, a driver new enough for the CUDA runtime linked
// in, and device code for this GPU's architecture in the library.
bool scan_cuda_usable();

}  // namespace scan
}  // namespace mvgpt
