// SelectiveScan's CUDA kernel: one thread per (batch row, channel), its state h[N] in registers,
// the time steps in order. B_t[n] and C_t[n] are the same address for every thread of a block
// (one broadcast load each); u, delta and z are read along each thread's own row.
//
//   dt = softplus?(delta + delta_bias);  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t  (h_0 = 0)
//   y_t = C_t . h_t + D u_t;  y *= silu(z)
//
// scan_channel is __host__ __device__: the kernel runs it on the GPU, and check/cuda_scan_check.cu
// runs the very same function on the CPU, so that the math is checked against the float64
// reference on machines without a GPU (tests/unit/test_cuda_kernel.py). fp32 throughout, with
// the accurate expf/log1pf (no fast-math).
#pragma once

#include <cmath>
#include <cstdint>

#include "scan_args.h"

#if defined(__CUDACC__)
#define MVGPT_HD __host__ __device__
#else
#define MVGPT_HD
#endif

namespace mvgpt {
namespace scan_cuda {

using scan::ScanArgs;

constexpr int64_t kMaxState = 64;  // h in registers; a larger state is refused by the op
constexpr int kThreads = 128;      // threads per block

// softplus as torch computes it (threshold 20: x itself above)
MVGPT_HD inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
MVGPT_HD inline float silu(float z) { return z / (1.0f + expf(-z)); }

// The whole scan of batch row b, channel d; NS >= a.state (states past a.state stay 0).
template <int NS>
MVGPT_HD inline void scan_channel(const ScanArgs& a, int64_t b, int64_t d) {
  const int64_t L = a.length, N = a.state;
  const int64_t row = (b * a.dim + d) * L;
  const float* bs = a.B + b * N * L;
  const float* cs = a.C + b * N * L;
  float h[NS], A[NS];
#pragma unroll
  for (int n = 0; n < NS; ++n) {
    h[n] = 0.0f;
    A[n] = n < N ? a.A[d * N + n] : 0.0f;
  }
  const float bias = a.delta_bias != nullptr ? a.delta_bias[d] : 0.0f;
  const float skip = a.D[d];
  for (int64_t t = 0; t < L; ++t) {
    float dt = a.delta[row + t] + bias;
    if (a.softplus) dt = softplus(dt);
    const float u = a.u[row + t];
    const float du = dt * u;
    float y = 0.0f;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
      if (n < N) {
        h[n] = expf(dt * A[n]) * h[n] + du * bs[n * L + t];
        y += cs[n * L + t] * h[n];
      }
    }
    y += skip * u;
    if (a.z != nullptr) y *= silu(a.z[row + t]);
    a.y[row + t] = y;
  }
}

// Every (row, channel) of `a` on the host, one after the other: the check program's path.
inline const char* scan_on_host(const ScanArgs& a) {
  if (a.state > kMaxState) return "state larger than the CUDA kernel's 64";
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t d = 0; d < a.dim; ++d) {
      if (a.state <= 16) {
        scan_channel<16>(a, b, d);
      } else {
        scan_channel<kMaxState>(a, b, d);
      }
    }
  }
  return nullptr;
}

}  // namespace scan_cuda
}  // namespace mvgpt
