#include "model.h"

#include <cstdlib>
#include <fstream>
#include <mutex>

#include "status.h"

namespace mvgpt {
namespace {

const char* const kFix = "fix: re-export the package with mvgpt-export";

bool is_file(const std::string& path) { return std::ifstream(path).good(); }

std::string element_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "type " + std::to_string(static_cast<int>(type));
  }
}

struct GraphTensor {
  std::string dtype;
  std::vector<int64_t> shape;  // -1: dynamic
};

void check_side(const std::string& stage, const char* kind, const std::vector<TensorEntry>& declared,
                const std::map<std::string, GraphTensor>& actual, std::vector<std::string>& problems) {
  std::map<std::string, const TensorEntry*> wanted;
  for (const TensorEntry& t : declared) wanted[t.name] = &t;
  for (const auto& [name, t] : wanted) {
    const auto found = actual.find(name);
    const std::string where = stage + " " + kind + " '" + name + "'";
    if (found == actual.end()) {
      problems.push_back(where + ": expected in the graph, got none");
      continue;
    }
    if (found->second.dtype != t->dtype) {
      problems.push_back(where + ": expected dtype " + t->dtype + ", got " + found->second.dtype);
    }
    const std::vector<int64_t>& have = found->second.shape;
    if (have.size() != t->shape.size()) {
      problems.push_back(where + ": expected rank " + std::to_string(t->shape.size()) + ", got " + std::to_string(have.size()));
      continue;
    }
    for (size_t axis = 0; axis < have.size(); ++axis) {  // two different numbers disagree
      if (t->shape[axis] >= 0 && have[axis] >= 0 && t->shape[axis] != have[axis]) {
        problems.push_back(where + " axis " + std::to_string(axis) + ": expected " + std::to_string(t->shape[axis]) +
                           ", got " + std::to_string(have[axis]));
      }
    }
  }
  for (const auto& [name, dtype] : actual) {
    if (!wanted.count(name)) problems.push_back(stage + " " + kind + " '" + name + "': in the graph, expected in the manifest");
  }
}

// The execution provider of every session: nothing for the CPU, CUDA's (device 0, onnxruntime's
// defaults) for "cuda", after checking that this onnxruntime library has it.
void check_provider(const std::string& provider) {
  if (provider == "cpu") return;
  if (provider != "cuda") {
    throw Error(MVGPT_INVALID_ARGUMENT, "unknown provider '" + provider + "': expected cpu or cuda; fix: pick one of those");
  }
  std::string available;
  for (const std::string& name : Ort::GetAvailableProviders()) {
    if (name == "CUDAExecutionProvider") return;
    available += (available.empty() ? "" : ", ") + name;
  }
  throw Error(MVGPT_UNSUPPORTED, "provider 'cuda' (CUDAExecutionProvider) is not in this onnxruntime library: expected it in "
                                 "the library's providers, got " + available + "; fix: choose cpu, or build against the "
                                 "onnxruntime-gpu wheel's library (ORT_LIBRARY)");
}

void add_provider(Ort::SessionOptions& so, const std::string& provider) {
  if (provider != "cuda") return;
  const OrtApi& api = Ort::GetApi();
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
  try {
    so.AppendExecutionProvider_CUDA_V2(*cuda);
  } catch (...) {
    api.ReleaseCUDAProviderOptions(cuda);
    throw;
  }
  api.ReleaseCUDAProviderOptions(cuda);
}

}  // namespace

Ort::Env& ort_env() {
  static Ort::Env env = [] {
    Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "mvgpt");
    Ort::MemoryInfo info("Cpu", OrtArenaAllocator, 0, OrtMemTypeDefault);
    Ort::ArenaCfg arena(0, -1, -1, -1);
    e.CreateAndRegisterAllocator(info, arena);
    return e;
  }();
  return env;
}

Model::Model(const std::string& folder, const ModelOptions& options)
    : manifest_(read_manifest(folder)), cpu_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
  std::vector<std::string> missing;
  for (const StageEntry& s : manifest_.stages) {
    if (!is_file(folder + "/" + s.file)) missing.push_back(s.file);
  }
  if (!is_file(folder + "/" + manifest_.tokenizer_file)) missing.push_back(manifest_.tokenizer_file);
  if (!missing.empty()) {
    std::string list;
    for (const auto& f : missing) list += (list.empty() ? "" : ", ") + f;
    throw Error(MVGPT_BAD_FORMAT, "'" + folder + "': expected the package files " + list + ", got them missing; " + kFix);
  }
  check_provider(options.provider);
  std::string library = options.ops_library;
  if (library.empty() && std::getenv("MVGPT_OPS_LIBRARY") != nullptr) library = std::getenv("MVGPT_OPS_LIBRARY");
  const bool have_library = !library.empty() && is_file(library);
  Ort::Env& env = ort_env();
  std::vector<std::string> problems;
  for (const StageEntry& s : manifest_.stages) {
    Ort::SessionOptions so;
    so.SetLogSeverityLevel(3);
    if (options.threads > 0) {
      so.SetIntraOpNumThreads(options.threads);
      so.SetInterOpNumThreads(1);
    }
    so.AddConfigEntry("session.use_env_allocators", "1");
    std::string file = s.file, variant = "main";
    if (!s.custom_op.empty()) {
      std::string reason = library.empty() ? std::string("no mvgpt custom-op library given")
                                           : "the mvgpt custom-op library " + library + " is not there";
      bool registered = false;
      if (have_library) {
        try {
          so.RegisterCustomOpsLibrary(library.c_str());
          registered = true;
        } catch (const Ort::Exception& e) {  // (as the Python runtime: the portable graph instead)
          reason = "onnxruntime could not load " + library + ": " + e.what();
          for (char& c : reason) c = (c == '\n' || c == '\r') ? ' ' : c;
        }
      }
      if (registered) {
        for (const auto& [k, v] : s.session_config) so.AddConfigEntry(k.c_str(), v.c_str());
      } else if (!s.portable_file.empty() && is_file(folder + "/" + s.portable_file)) {
        so = Ort::SessionOptions();  // (no library registered in it)
        so.SetLogSeverityLevel(3);
        if (options.threads > 0) {
          so.SetIntraOpNumThreads(options.threads);
          so.SetInterOpNumThreads(1);
        }
        so.AddConfigEntry("session.use_env_allocators", "1");
        file = s.portable_file;
        variant = "portable";
        custom_ops_ = false;
        notes_.push_back(s.name + " runs the portable graph (" + reason + "; slower)");
      } else {
        throw Error(MVGPT_NOT_FOUND, s.name + " needs the " + s.custom_op + " custom op and the package has no portable graph: expected the mvgpt custom-op library or '" +
                                         s.portable_file + "', got neither; fix: pass the library (libmvgpt_ops) built by the set-up");
      }
    } else {
      for (const auto& [k, v] : s.session_config) so.AddConfigEntry(k.c_str(), v.c_str());
    }
    add_provider(so, options.provider);
    const std::string path = folder + "/" + file;
    std::unique_ptr<Ort::Session> session;
    try {
      session = std::make_unique<Ort::Session>(env, path.c_str(), so);
    } catch (const Ort::Exception& e) {
      std::string reason = e.what();
      if (reason.size() > 300) reason.resize(300);
      for (char& c : reason) c = (c == '\n' || c == '\r') ? ' ' : c;
      throw Error(MVGPT_BAD_FORMAT, path + ": expected an ONNX graph onnxruntime can load, got an error (" + reason + "); " + kFix);
    }
    Ort::AllocatorWithDefaultOptions alloc;
    Ort::ModelMetadata meta = session->GetModelMetadata();
    const std::pair<const char*, std::string> wanted[] = {
        {"mvgpt.stage", s.name}, {"mvgpt.schema_version", std::to_string(kSchemaVersion)}, {"mvgpt.variant", variant}};
    for (const auto& [key, value] : wanted) {
      auto found = meta.LookupCustomMetadataMapAllocated(key, alloc);
      const std::string got = found ? found.get() : "";
      if (got != value) problems.push_back(s.name + " graph metadata " + key + ": expected '" + value + "', got '" + got + "'");
    }
    std::map<std::string, GraphTensor> inputs, outputs;
    for (size_t i = 0; i < session->GetInputCount(); ++i) {
      const Ort::TypeInfo type = session->GetInputTypeInfo(i);  // (info points into it)
      const auto info = type.GetTensorTypeAndShapeInfo();
      inputs[session->GetInputNameAllocated(i, alloc).get()] = {element_name(info.GetElementType()), info.GetShape()};
    }
    for (size_t i = 0; i < session->GetOutputCount(); ++i) {
      const Ort::TypeInfo type = session->GetOutputTypeInfo(i);
      const auto info = type.GetTensorTypeAndShapeInfo();
      outputs[session->GetOutputNameAllocated(i, alloc).get()] = {element_name(info.GetElementType()), info.GetShape()};
    }
    check_side(s.name, "input", s.inputs, inputs, problems);
    check_side(s.name, "output", s.outputs, outputs, problems);
    sessions_[s.name] = std::move(session);
  }
  if (!problems.empty()) {
    std::string list;
    for (const auto& p : problems) list += (list.empty() ? "" : "; ") + p;
    throw Error(MVGPT_BAD_FORMAT, "'" + folder + "': the graphs do not match manifest.json (" + std::to_string(problems.size()) +
                                      " mismatches: " + list + "); " + kFix);
  }
}

}  // namespace mvgpt
