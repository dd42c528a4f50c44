// mvgpt::SelectiveScan on the GPU: the launch of scan_cuda.cuh's kernel, for the op's CUDA
// execution-provider kernel (selective_scan.cc, built with MVGPT_CUDA). Compiled by nvcc when the
// library is built with CUDA (CMake MVGPT_CUDA=ON); the CPU build does not include this file.

#include <cuda_runtime.h>

#include "scan_cuda.cuh"

namespace mvgpt {
namespace scan_cuda {
namespace {

template <int NS>
__global__ void __launch_bounds__(kThreads) scan_kernel(ScanArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.batch * a.dim) scan_channel<NS>(a, i / a.dim, i % a.dim);
}

}  // namespace
}  // namespace scan_cuda

namespace scan {

const char* launch_scan_cuda(const ScanArgs& a, void* stream) {
  using namespace scan_cuda;
  if (a.state > kMaxState) return "state larger than the CUDA kernel's 64";
  const int64_t items = a.batch * a.dim;
  if (items == 0 || a.length == 0) return nullptr;
  const unsigned blocks = static_cast<unsigned>((items + kThreads - 1) / kThreads);
  auto s = static_cast<cudaStream_t>(stream);
  if (a.state <= 16) {
    scan_kernel<16><<<blocks, kThreads, 0, s>>>(a);
  } else {
    scan_kernel<kMaxState><<<blocks, kThreads, 0, s>>>(a);
  }
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

bool scan_cuda_usable() {
  int devices = 0;
  bool usable = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  cudaFuncAttributes attributes;  // fails where the library holds no code this GPU can run
  usable = usable && cudaFuncGetAttributes(&attributes, scan_cuda::scan_kernel<16>) == cudaSuccess;
  cudaGetLastError();  // clear what a failed probe left
  return usable;
}

}  // namespace scan
}  // namespace mvgpt
