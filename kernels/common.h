// What both ops (selective_scan.cc, attention.cc) share on top of cpu.h (the part the check
// program shares too): onnxruntime's C++ API, the one way a failure is reported (fail, check,
// to_status: every message starts with the op's name), attribute reading that rejects an
// attribute of the wrong type, and shape text for error messages.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "cpu.h"  // MVGPT_X86 / MVGPT_ARM, instruction sets, thread_scratch, kLog2e

namespace mvgpt {

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Every failure of an op: an Ort::Exception whose message names the op ("mvgpt::<op>: ...").
[[noreturn]] inline void fail(const char* op, const std::string& what,
                              OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  throw Ort::Exception(std::string("mvgpt::") + op + ": " + what, code);
}

// A failed OrtApi call as fail(), with onnxruntime's message and code.
inline void check(const OrtApi& api, const char* op, OrtStatus* st) {
  if (st == nullptr) return;
  const std::string msg = api.GetErrorMessage(st);
  const OrtErrorCode code = api.GetErrorCode(st);
  api.ReleaseStatus(st);
  fail(op, msg, code);
}

// Runs `body` where onnxruntime wants a status back (kernel creation, compute): nullptr, or the
// exception it threw as a status naming the op.
template <typename Body>
OrtStatusPtr to_status(const OrtApi& api, const char* op, Body&& body) {
  try {
    body();
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, (std::string("mvgpt::") + op + ": " + e.what()).c_str());
  }
  return nullptr;
}

// Whether the node has an attribute `name` of any type (onnxruntime's getters fail alike for an
// absent attribute and for one of another type).
inline bool has_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  auto ok = [&api](OrtStatus* st) {
    if (st == nullptr) return true;
    api.ReleaseStatus(st);
    return false;
  };
  int64_t i = 0;
  float f = 0.0f;
  size_t string_size = 0, ints = 0, floats = 0;
  return ok(api.KernelInfoGetAttribute_int64(info, name, &i)) ||
         ok(api.KernelInfoGetAttribute_float(info, name, &f)) ||
         ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &string_size)) ||
         ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &ints)) ||
         ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &floats));
}

// An attribute of `op`'s node read with `get` (an OrtApi getter of type T): `dflt` when it is
// absent, an error when it has another type (`type` says which it must be: "an int").
template <typename T, typename Getter>
T read_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* op, const char* name,
                 T dflt, Getter get, const char* type) {
  T v = dflt;
  OrtStatus* st = get(info, name, &v);
  if (st == nullptr) return v;
  api.ReleaseStatus(st);
  if (has_attribute(api, info, name)) {
    fail(op, std::string("attribute ") + name + ": expected " + type +
                 ", got another type; fix: write it as " + type + " attribute");
  }
  return dflt;
}

inline int64_t attr_int(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                        const char* name, int64_t dflt) {
  return read_attribute(api, info, op, name, dflt, api.KernelInfoGetAttribute_int64, "an int");
}

inline float attr_float(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                        const char* name, float dflt) {
  return read_attribute(api, info, op, name, dflt, api.KernelInfoGetAttribute_float, "a float");
}

}  // namespace mvgpt
