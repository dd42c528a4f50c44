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
  const int64_t B = in.i64("batch"), D = in.i64("dim"), L = in.i64("length");
  const int64_t N = in.i64("state"), has_z = in.i64("has_z"), has_bias = in.i64("has_bias");
  const int64_t softplus = in.i64("softplus");
  const auto u = in.array<float>(B * D * L, "u"), delta = in.array<float>(B * D * L, "delta");
  const auto A = in.array<float>(D * N, "A"), Bm = in.array<float>(B * N * L, "B");
  const auto C = in.array<float>(B * N * L, "C"), Dv = in.array<float>(D, "D");
  const auto z = in.array<float>(has_z ? B * D * L : 0, "z");
  const auto bias = in.array<float>(has_bias ? D : 0, "delta_bias");
  in.expect_end();
  std::vector<float> y(static_cast<size_t>(B * D * L));
  const char* error = nullptr;
  if (!on_device) {
    const scan::ScanArgs a{B,         D,        L,         N,  u.data(), delta.data(), A.data(),
                           Bm.data(), C.data(), Dv.data(), has_z ? z.data() : nullptr,
                           has_bias ? bias.data() : nullptr, softplus != 0, y.data()};
    error = mvgpt::scan_cuda::scan_on_host(a);
  } else {
    Device dev;
    float* dy = dev.put(y);
    const scan::ScanArgs a{B,           D,           L,           N,
                           dev.put(u),  dev.put(delta), dev.put(A), dev.put(Bm),
                           dev.put(C),  dev.put(Dv),  dev.put(z), dev.put(bias),
                           softplus != 0, dy};
    error = scan::launch_scan_cuda(a, nullptr);
    if (error == nullptr) {
      Device::check(cudaDeviceSynchronize());
      if (!y.empty()) {
        Device::check(cudaMemcpy(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
      }
    }
  }
  if (error != nullptr) throw BadCase(error);
  write(out, {&y});
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
