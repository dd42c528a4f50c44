// The package's onnxruntime sessions, opened the way the manifest says: a stage whose graph needs
// an mvgpt op gets the custom-op library and its session config, or its portable twin when the
// library is not there; one process-wide CPU arena; every graph's metadata, tensor names and
// dtypes checked against the manifest, all problems reported at once.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

#include "manifest.h"

namespace mvgpt {

struct ModelOptions {
  int threads = 0;          // intra-op threads; 0: onnxruntime's default
  std::string ops_library;  // libmvgpt_ops; "": $MVGPT_OPS_LIBRARY, else none (portable graphs)
  std::string provider = "cpu";  // or "cuda": onnxruntime's CUDA execution provider, then the CPU
};

class Model {
 public:
  Model(const std::string& folder, const ModelOptions& options);

  const Manifest& manifest() const { return manifest_; }
  Ort::Session& session(const std::string& stage) { return *sessions_.at(stage); }
  bool custom_ops() const { return custom_ops_; }
  const std::vector<std::string>& notes() const { return notes_; }
  Ort::MemoryInfo& cpu() { return cpu_; }

 private:
  Manifest manifest_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
  Ort::MemoryInfo cpu_;
  bool custom_ops_ = true;
  std::vector<std::string> notes_;
};

Ort::Env& ort_env();  // one per process, with the shared CPU arena registered

}  // namespace mvgpt
