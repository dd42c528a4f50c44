// manifest.json read once into typed structs (runtime/PACKAGE.md), checked as the Python runtime
// checks it: schema version, required keys, every stage's tensors by role. Keys are spelled as
// runtime/manifest.py defines them.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mvgpt {

constexpr int kSchemaVersion = 3;

struct TensorEntry {
  std::string name, role, dtype;
  int layer = -1;              // the decoder's cache tensors
  std::vector<int64_t> shape;  // -1: a named (dynamic) axis
};

struct StageEntry {
  std::string name;  // the stage
  std::string file, portable_file;
  std::string custom_op;  // "" when the main graph needs none
  std::map<std::string, std::string> session_config;
  std::vector<TensorEntry> inputs, outputs;
  std::map<std::string, std::string> input_names, output_names;  // role -> graph name
  // per decoder layer: past key, past value, present key, present value
  std::vector<std::array<std::string, 4>> cache;
};

struct PixelEntry {
  int size = 224;
  std::array<double, 3> mean{}, std{};
  std::string resize;
};

struct Manifest {
  std::string folder;
  std::vector<StageEntry> stages;  // data-flow order
  PixelEntry clip, video_mamba;
  int num_frames = 16, chunk_size = 8, keep_per_chunk = 4;
  double fps = 1.0;
  std::string template_text, system, placeholder, stop_string;
  int num_placeholders = 16, num_sentinels = 8;
  int64_t sentinel = -200;
  int64_t im_end = -1;
  int num_layers = 0, kv_heads = 0, head_dim = 0, hidden_size = 0, vocab_size = 0;
  int64_t max_positions = 0;
  int num_visual_tokens = 0;
  std::string tokenizer_file;
  // generation defaults (generation_config.json values)
  int max_new_tokens = 1024;
  std::vector<int64_t> eos_ids;
  double repetition_penalty = 1.0, temperature = 1.0, top_p = 1.0;
  int top_k = 50;
  bool random_weights = false;

  const StageEntry& stage(const std::string& name) const;
};

// Reads `folder`/manifest.json; throws Error (MVGPT_NOT_FOUND, MVGPT_BAD_FORMAT) naming every
// problem it finds.
Manifest read_manifest(const std::string& folder);

extern const char* const kStages[7];

}  // namespace mvgpt
