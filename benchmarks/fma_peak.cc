// fma_peak: this machine's fused multiply-add throughput at one vector width, measured, not
// assumed from a clock. benchmarks/floors.py compiles it at benchmark time once per width:
//   g++ -O2 -mfma [-mavx2 | -mavx512f] -DWIDTH=1|8|16 fma_peak.cc -pthread
// and runs `fma_peak THREADS`: THREADS threads, started together, each run 12 independent FMA
// chains (more than latency x pipes on current x86 cores) for a fixed count, best of 7 rounds.
// Prints one line: the lane-FMAs per second of all threads together (WIDTH lanes per FMA).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if WIDTH == 16
using Vec = __m512;
static inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline Vec set1(float x) { return _mm512_set1_ps(x); }
#elif WIDTH == 8
using Vec = __m256;
static inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline Vec set1(float x) { return _mm256_set1_ps(x); }
#elif WIDTH == 1
using Vec = __m128;  // one lane: vfmadd231ss
static inline Vec fma(Vec a, Vec b, Vec c) { return _mm_fmadd_ss(a, b, c); }
static inline Vec set1(float x) { return _mm_set1_ps(x); }
#else
#error "compile with -DWIDTH=1, 8 or 16"
#endif

constexpr long kIters = 20'000'000;  // x 12 FMAs: ~35 ms per round at 2 FMAs a cycle
constexpr int kRounds = 7;

// Seconds of the fastest of kRounds rounds.
static double rounds() {
  // a = a * m + c converges to c / (1 - m) = 0.1: no denormals, no overflow
  Vec a0 = set1(1.00f), a1 = set1(1.01f), a2 = set1(1.02f), a3 = set1(1.03f);
  Vec a4 = set1(1.04f), a5 = set1(1.05f), a6 = set1(1.06f), a7 = set1(1.07f);
  Vec a8 = set1(1.08f), a9 = set1(1.09f), a10 = set1(1.10f), a11 = set1(1.11f);
  const Vec m = set1(0.999999f), c = set1(1e-7f);
  double best = 1e30;
  for (int r = 0; r < kRounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < kIters; ++i) {
      a0 = fma(a0, m, c), a1 = fma(a1, m, c), a2 = fma(a2, m, c), a3 = fma(a3, m, c);
      a4 = fma(a4, m, c), a5 = fma(a5, m, c), a6 = fma(a6, m, c), a7 = fma(a7, m, c);
      a8 = fma(a8, m, c), a9 = fma(a9, m, c), a10 = fma(a10, m, c), a11 = fma(a11, m, c);
      // the compiler may neither merge nor drop the chains (nor move them out of the loop)
      __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
      __asm__ volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    const std::chrono::duration<double> s = std::chrono::steady_clock::now() - t0;
    best = std::min(best, s.count());
  }
  return best;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) {
    std::fprintf(stderr, "usage: fma_peak THREADS (>= 1), got %s\n", argv[1]);
    return 2;
  }
  std::vector<double> seconds(threads);
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      seconds[t] = rounds();
    });
  }
  for (auto& th : pool) th.join();
  const double slowest = *std::max_element(seconds.begin(), seconds.end());
  std::printf("%.6e\n", static_cast<double>(threads) * kIters * 12 * WIDTH / slowest);
  return 0;
}
