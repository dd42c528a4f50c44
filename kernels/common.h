// What both kernel sources (selective_scan.cc, attention.cc) share: the x86 switch, a cached CPU
// feature probe, per-thread scratch, attribute reading and shape text for error messages.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MVGPT_X86 1
#include <immintrin.h>
#endif

namespace mvgpt {

constexpr float kLog2e = 1.4426950408889634f;

struct CpuFeatures {
  bool avx2;    // with FMA
  bool avx512;  // F and DQ
};

// Probed once per process.
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f{false, false};
#if MVGPT_X86
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif
    return f;
  }();
  return features;
}

// `floats` floats of this thread's scratch, 64-byte aligned; valid until its next call.
inline float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(floats + 16);
  auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// An int attribute of the node, `dflt` when it is absent.
inline int64_t attr_int(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                        int64_t dflt) {
  int64_t v = dflt;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v)) {
    api.ReleaseStatus(st);
    return dflt;
  }
  return v;
}

}  // namespace mvgpt
