// cuda_scan_check: one SelectiveScan case (an "MVGSCAN1" file, see kernel_check.cc) through the
// CUDA kernel's code: `host` runs scan_cuda.cuh's scan_channel on the CPU, every (row, channel)
// in turn, so that the kernel's math is checked on machines without a GPU; `device` runs the
// library's launch (selective_scan_cuda.cu) on the GPU. tests/unit/test_cuda_kernel.py builds it
// with nvcc and compares the output with the float64 reference.
//
//   cuda_scan_check CASE OUT host|device
//
// Prints "op=scan isa=cuda-host" or "op=scan isa=cuda". Exit status 2: usage; 1: a bad case
// file or a CUDA error (no GPU, ...).

#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../scan_cuda.cuh"
#include "case_file.h"

namespace {

struct Device {  // device copies of the case's arrays, freed at the end
  std::vector<void*> owned;
  ~Device() {
    for (void* p : owned) cudaFree(p);
  }
  float* put(const std::vector<float>& host) {
    if (host.empty()) return nullptr;
    void* p = nullptr;
    check(cudaMalloc(&p, host.size() * sizeof(float)));
    owned.push_back(p);
    check(cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    return static_cast<float*>(p);
  }
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw BadCase(std::string("CUDA: ") + cudaGetErrorString(e));
  }
};

void run_scan(Reader& in, const char* out, bool on_device) {
  namespace scan = mvgpt::scan;
  ScanCase c(in);
  const char* error = nullptr;
  if (!on_device) {
    error = mvgpt::scan_cuda::scan_on_host(
        c.args([](const std::vector<float>& v) { return v.data(); }, c.y.data()));
  } else {
    Device dev;
    float* dy = dev.put(c.y);
    error = scan::launch_scan_cuda(c.args([&](const std::vector<float>& v) { return dev.put(v); }, dy),
                                   nullptr);
    if (error == nullptr) {
      Device::check(cudaDeviceSynchronize());
      if (!c.y.empty()) {
        Device::check(cudaMemcpy(c.y.data(), dy, c.y.size() * sizeof(float), cudaMemcpyDeviceToHost));
      }
    }
  }
  if (error != nullptr) throw BadCase(error);
  write(out, {&c.y});
  std::printf("op=scan isa=%s\n", on_device ? "cuda" : "cuda-host");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 || (std::strcmp(argv[3], "host") != 0 && std::strcmp(argv[3], "device") != 0)) {
    std::fprintf(stderr, "usage: %s CASE OUT host|device\n", argv[0]);
    return 2;
  }
  try {
    Reader in(argv[1]);
    const std::string tag = in.tag();
    if (tag != "MVGSCAN1") {
      throw BadCase(std::string(argv[1]) + ": expected the tag MVGSCAN1, got '" + tag + "'");
    }
    run_scan(in, argv[2], std::strcmp(argv[3], "device") == 0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_scan_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
