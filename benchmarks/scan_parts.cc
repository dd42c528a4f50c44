// The parts of mvgpt::SelectiveScan's AVX2 state-lane path (and the AVX-512 recurrence) timed
// alone, their data in cache: bench_scan_parts.py compiles this against kernels/ and runs it.
// Prints one line per part: "<part> <nanoseconds per unit> <unit>".
//   recur_lanes   AVX2 recurrence, N = 16, dt |A| in range: per vector update (8 lanes)
//   prep_lanes    AVX2 softplus(delta + bias), dt * u: per 8 steps of one channel
//   finish_lanes  AVX2 (y + D u) * silu(z): per 8 steps of one channel
//   recur16       AVX-512 channel-lane recurrence, N = 16: per vector update (16 lanes)
#include <chrono>
#include <cstdio>
#include <vector>

#include "scan_kernel.h"

namespace {

using mvgpt::scan::ScanArgs;
namespace A2 = mvgpt::scan::avx2;
namespace A5 = mvgpt::scan::avx512;

// best seconds of `reps` rounds of `fn`
template <typename F>
double best_of(int reps, F fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = s < best ? s : best;
  }
  return best;
}

float sink = 0.0f;  // keeps the results alive

void lanes() {
  constexpr int N = 16, L = 128, kIters = 2000;
  std::vector<float> dt(L + 64), dtu(L + 64), b(L * N), c(L * N), a2(N), h(N), y(L + 64);
  for (int i = 0; i < L; ++i) dt[i] = 0.01f + 0.5f * static_cast<float>(i % 7) / 7, dtu[i] = 0.3f;
  for (int i = 0; i < L * N; ++i) b[i] = 0.1f * (i % 5), c[i] = 0.2f * (i % 3);
  for (int n = 0; n < N; ++n) a2[n] = -(n + 1) * mvgpt::kLog2e;
  double s = best_of(30, [&] {
    for (int it = 0; it < kIters; ++it) {
      A2::recur_lanes<A2::V, 2, A2::kInRange>(L, dt.data(), dtu.data(), b.data(), c.data(),
                                              a2.data(), h.data(), y.data());
      for (float& v : h) v = 0.0f;
    }
  });
  sink += y[5];
  std::printf("recur_lanes %.4f vector_update\n", s / (kIters * L * 2.0) * 1e9);

  std::vector<float> u(L), delta(L), z(L), A(N, -1.0f), D(1, 0.5f), bias(1, 0.1f), out(L);
  for (int i = 0; i < L; ++i) {
    u[i] = 0.3f * (i % 5) - 0.5f, delta[i] = -1.0f + 0.1f * (i % 9);
    z[i] = 0.2f * (i % 11) - 1.0f, y[i] = 0.1f * i;
  }
  ScanArgs a{};
  a.u = u.data(), a.delta = delta.data(), a.A = A.data(), a.D = D.data(), a.z = z.data();
  a.delta_bias = bias.data(), a.y = out.data(), a.batch = 1, a.dim = 1, a.state = N, a.length = L;
  a.softplus = true;
  constexpr int kCalls = 20000;
  const double per8 = kCalls * L / 8.0;
  int decay = 0;
  s = best_of(30, [&] {
    for (int it = 0; it < kCalls; ++it) {
      decay += A2::prep_lanes<A2::V, true>(a, 0, 0, L, mvgpt::kLog2e, dt.data(), dtu.data());
    }
  });
  sink += static_cast<float>(decay) + dt[3];
  std::printf("prep_lanes %.4f 8_steps\n", s / per8 * 1e9);
  s = best_of(30, [&] {
    for (int it = 0; it < kCalls; ++it) A2::finish_lanes<A2::V>(a, 0, 0, L, y.data());
  });
  sink += out[3];
  std::printf("finish_lanes %.4f 8_steps\n", s / per8 * 1e9);
}

void channel_lanes() {
  constexpr int N = 16, L = 64, W = 16, kIters = 4000;
  std::vector<float> dt(L * W), dtu(L * W), b(L * N), c(L * N), a2(N * W), h(N * W), y(L * W);
  for (int i = 0; i < L * W; ++i) dt[i] = 0.01f + 0.5f * static_cast<float>(i % 7) / 7, dtu[i] = 0.3f;
  for (int i = 0; i < L * N; ++i) b[i] = 0.1f * (i % 5), c[i] = 0.2f * (i % 3);
  for (int n = 0; n < N * W; ++n) a2[n] = -(n % N + 1) * mvgpt::kLog2e;
  const A5::RowPrefetch none(0);
  const double s = best_of(30, [&] {
    for (int it = 0; it < kIters; ++it) {
      A5::recur<16>(L, N, dt.data(), dtu.data(), b.data(), c.data(), a2.data(), h.data(),
                    y.data(), none);
      for (float& v : h) v = 0.0f;
    }
  });
  sink += y[5];
  std::printf("recur16 %.4f vector_update\n", s / (static_cast<double>(kIters) * L * N) * 1e9);
}

}  // namespace

int main() {
  if (!mvgpt::cpu_has(mvgpt::kAvx2)) {
    std::fprintf(stderr, "scan_parts: this CPU lacks AVX2 + FMA\n");
    return 1;
  }
  lanes();
  if (mvgpt::cpu_has(mvgpt::kAvx512)) channel_lanes();
  return sink == 12345.0f ? 2 : 0;
}
