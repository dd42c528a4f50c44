// What both ops (selective_scan.cc, attention.cc) share on top of cpu.h (the part the check
// program shares too): onnxruntime's C++ API, attribute reading and shape text for error messages.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <string>
#include <vector>

#include "cpu.h"  // MVGPT_X86 / MVGPT_ARM, instruction sets, thread_scratch, kLog2e

namespace mvgpt {

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
