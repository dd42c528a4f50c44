// The C entry points of libmvgpt_ops.so: RegisterCustomOps (onnxruntime's hook: the "mvgpt"
// domain with every op, made once and never freed since it must outlive the sessions) and the
// report of which instruction set each op ran, for tests and benchmarks (read through ctypes).

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <cstring>
#include <exception>
#include <string>

#include "cpu.h"
#include "ops.h"
#include "scan_args.h"

#define MVGPT_EXPORT extern "C" __attribute__((visibility("default")))

namespace mvgpt {
namespace {

std::atomic<const char*> g_last_path[2] = {{""}, {""}};

Ort::CustomOpDomain& domain() {
  static Ort::CustomOpDomain* d = [] {
    auto* made = new Ort::CustomOpDomain("mvgpt");
    made->Add(selective_scan_op());
#if defined(MVGPT_CUDA)
    made->Add(selective_scan_cuda_op());  // the same op for the CUDA execution provider
#endif
    made->Add(group_query_attention_op());
    return made;
  }();
  return *d;
}

}  // namespace

void note_path(Op op, const char* path) {
  g_last_path[static_cast<int>(op)].store(path, std::memory_order_relaxed);
}

}  // namespace mvgpt

MVGPT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                       const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // runtime older than the headers: report with the version-1 API
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL,
        "mvgpt ops: this onnxruntime is older than the headers the library was built "
        "with; rebuild with `python -m mvgpt.kernels.build` against its headers");
  }
  Ort::InitApi(api);
  try {
    Ort::UnownedSessionOptions(options).Add(mvgpt::domain());
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

// The path the last run of `op` ("SelectiveScan" or "GroupQueryAttention") in this process took:
// "scalar", "neon", "avx2", "avx512", "cuda" (the CUDA kernel, in a build with CUDA), or
// "onnxruntime" for a GroupQueryAttention call handed to
// onnxruntime's own kernel (several positions, options the own kernel lacks); "" before its
// first run; NULL for an unknown op name.
MVGPT_EXPORT const char* mvgpt_ops_isa(const char* op) {
  if (op == nullptr) return nullptr;
  if (std::strcmp(op, "SelectiveScan") == 0) return mvgpt::g_last_path[0].load();
  if (std::strcmp(op, "GroupQueryAttention") == 0) return mvgpt::g_last_path[1].load();
  return nullptr;
}

// The instruction sets this CPU runs with this build, narrowest first: "scalar avx2 avx512".
MVGPT_EXPORT const char* mvgpt_ops_cpu_isas() {
  static const std::string list = mvgpt::cpu_isa_list(" ");
  return list.c_str();
}

// The execution providers this library has a kernel of `op` for that can run on this machine,
// space-separated: "CPUExecutionProvider", plus "CUDAExecutionProvider" for SelectiveScan in a
// build with CUDA where its kernel can run (a GPU, a new enough driver, device code for it);
// NULL for an unknown op name. The runtime reads it to run a stage's graph with the op on the
// CUDA provider instead of the portable graph.
MVGPT_EXPORT const char* mvgpt_ops_providers(const char* op) {
  if (op == nullptr) return nullptr;
#if defined(MVGPT_CUDA)
  static const bool usable = mvgpt::scan::scan_cuda_usable();
  if (std::strcmp(op, "SelectiveScan") == 0) {
    return usable ? "CPUExecutionProvider CUDAExecutionProvider" : "CPUExecutionProvider";
  }
#else
  if (std::strcmp(op, "SelectiveScan") == 0) return "CPUExecutionProvider";
#endif
  if (std::strcmp(op, "GroupQueryAttention") == 0) return "CPUExecutionProvider";
  return nullptr;
}
