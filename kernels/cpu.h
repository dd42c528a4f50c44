// What the kernels need besides onnxruntime, shared by the library (selective_scan.cc,
// attention.cc) and the check program (check/kernel_check.cc): the architecture switch, the
// instruction sets the kernels are compiled for and the choice among them (a CPU probe made once
// per process), per-thread scratch, and kLog2e.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MVGPT_X86 1
#include <immintrin.h>
#elif defined(__aarch64__)
#define MVGPT_ARM 1  // AArch64: NEON (Advanced SIMD) is part of the base architecture
#include <arm_neon.h>
#endif

namespace mvgpt {

constexpr float kLog2e = 1.4426950408889634f;

// Asks for the cache line at p (a line about to be written is asked for the same way). An asm
// statement, not __builtin_prefetch: GCC's loop distribution moves builtin prefetches out of a
// loop into one of their own, which then asks for every line at once.
constexpr int64_t kLineFloats = 64 / static_cast<int64_t>(sizeof(float));  // a cache line
inline void prefetch(const void* p) {
#if MVGPT_X86
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#elif MVGPT_ARM
  asm volatile("prfm pldl1keep, %0" : : "Q"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// The instruction sets of simd.h, narrowest first (attention picks downwards from a cap).
enum Isa : int { kScalar, kNeon, kAvx2, kAvx512, kIsaCount };
constexpr const char* kIsaNames[kIsaCount] = {"scalar", "neon", "avx2", "avx512"};
constexpr int kIsaLanes[kIsaCount] = {1, 4, 8, 16};

// Which instruction sets this build holds and this CPU runs, probed once per process: scalar
// always; neon on AArch64; avx2 = AVX2 + FMA and avx512 = AVX-512 F + DQ (+ AVX2, FMA) on x86-64.
inline bool cpu_has(Isa isa) {
  static const struct Probe {
    bool has[kIsaCount];
  } probe = [] {
    Probe p{{true, false, false, false}};
#if MVGPT_X86
    __builtin_cpu_init();
    p.has[kAvx2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    p.has[kAvx512] =
        p.has[kAvx2] && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#elif MVGPT_ARM
    p.has[kNeon] = true;
#endif
    return p;
  }();
  return isa >= 0 && isa < kIsaCount && probe.has[isa];
}

// This CPU's instruction sets, narrowest first, joined by `sep`: "scalar, avx2, avx512".
inline std::string cpu_isa_list(const char* sep = ", ") {
  std::string out;
  for (int i = 0; i < kIsaCount; ++i) {
    if (cpu_has(static_cast<Isa>(i))) out += (out.empty() ? "" : sep) + std::string(kIsaNames[i]);
  }
  return out;
}

inline Isa widest_isa() {
  for (int i = kIsaCount - 1; i > kScalar; --i) {
    if (cpu_has(static_cast<Isa>(i))) return static_cast<Isa>(i);
  }
  return kScalar;
}

// The widest instruction set up to `cap` that this CPU has and whose width divides `n`.
inline Isa widest_dividing(Isa cap, int64_t n) {
  for (int i = cap; i > kScalar; --i) {
    if (cpu_has(static_cast<Isa>(i)) && n % kIsaLanes[i] == 0) return static_cast<Isa>(i);
  }
  return kScalar;
}

// The instruction set an override asks for: null or "" = the widest this CPU has, else a name of
// kIsaNames that this CPU has. Anything else is an error, never a silent fallback: false, with
// *error = one line (what, expected, got, fix) naming `source` (the variable that was read).
inline bool parse_isa(const char* source, const char* want, Isa* out, std::string* error) {
  if (want == nullptr || *want == '\0') {
    *out = widest_isa();
    return true;
  }
  const std::string w = want;
  for (int i = 0; i < kIsaCount; ++i) {
    if (w != kIsaNames[i]) continue;
    if (!cpu_has(static_cast<Isa>(i))) {
      *error = std::string(source) + "=" + w +
               " names an instruction set this CPU lacks: " + "expected one of this CPU's (" +
               cpu_isa_list() + "), got " + w + "; fix: unset " + source +
               " or set it to one of those";
      return false;
    }
    *out = static_cast<Isa>(i);
    return true;
  }
  std::string known;
  for (int i = 0; i < kIsaCount; ++i) known += (i ? ", " : "") + std::string(kIsaNames[i]);
  *error = std::string(source) + "='" + w + "' is not an instruction set of the kernels (" + known +
           "): expected one of this CPU's (" + cpu_isa_list() + "), got '" + w + "'; fix: unset " +
           source + " or set it to one of those";
  return false;
}

// `floats` floats of this thread's scratch, 64-byte aligned; valid until its next call.
inline float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(floats + 16);
  auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

}  // namespace mvgpt
