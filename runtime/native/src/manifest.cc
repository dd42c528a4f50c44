#include "manifest.h"

#include <algorithm>
#include <climits>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "status.h"

namespace mvgpt {
namespace {

using json = nlohmann::json;

const char* const kFix = "fix: re-export the package with mvgpt-export";

// every stage's (input roles, output roles); the decoder's cache roles come per layer
struct Roles {
  std::vector<std::string> inputs, outputs;
};
const std::map<std::string, Roles>& stage_roles() {
  static const std::map<std::string, Roles> roles = {
      {"clip_vision", {{"pixel_values"}, {"image_features"}}},
      {"frame_scorer", {{"image_features"}, {"frame_scores"}}},
      {"video_mamba", {{"pixel_values"}, {"video_features"}}},
      {"image_projector", {{"image_features"}, {"image_tokens"}}},
      {"video_projector", {{"video_features"}, {"video_tokens"}}},
      {"embed_tokens", {{"input_ids"}, {"inputs_embeds"}}},
      {"decoder", {{"inputs_embeds", "attention_mask", "num_logits_to_keep"}, {"logits"}}},
  };
  return roles;
}

// `object[key]`, or `fallback` when the key is absent or null (as the Python runtime reads it);
// a value of another type throws json::type_error (read_manifest reports it as BAD_FORMAT)
template <typename T>
T opt(const json& object, const char* key, T fallback) {
  if (!object.is_object() || !object.contains(key) || object.at(key).is_null()) return fallback;
  return object.at(key).get<T>();
}

int64_t opt_int(const json& object, const char* key, int64_t fallback) {
  if (!object.is_object() || !object.contains(key) || object.at(key).is_null()) return fallback;
  const json& v = object.at(key);
  if (!v.is_number_integer()) throw Error(MVGPT_BAD_FORMAT, std::string(key) + ": expected an integer, got " + v.dump());
  return v.get<int64_t>();
}

class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}
  std::vector<std::string> problems;

  const json* find(const json& object, const std::string& where, const char* key) {
    if (!object.is_object() || !object.contains(key) || object.at(key).is_null()) {
      problems.push_back(where + key);
      return nullptr;
    }
    return &object.at(key);
  }
  template <typename T>
  T get(const json& object, const std::string& where, const char* key, T fallback) {
    const json* v = find(object, where, key);
    if (v == nullptr) return fallback;
    try {
      return v->get<T>();
    } catch (const json::exception&) {
      problems.push_back(where + key + " (of the right type)");
      return fallback;
    }
  }
  int positive(const json& object, const std::string& where, const char* key) {
    const json* v = find(object, where, key);
    if (v == nullptr) return 0;
    if (!v->is_number_integer() || v->get<int64_t>() <= 0 || v->get<int64_t>() > INT32_MAX) {
      problems.push_back(where + key + " (an integer > 0)");
      return 0;
    }
    return v->get<int>();
  }
  [[noreturn]] void raise() const {
    std::string list;
    for (const auto& p : problems) list += (list.empty() ? "" : ", ") + p;
    throw Error(MVGPT_BAD_FORMAT, path_ + ": expected the keys " + list + ", got a manifest without them; " + kFix);
  }

 private:
  std::string path_;
};

void read_tensors(const json& list, const std::string& stage, const char* kind, std::vector<TensorEntry>& out,
                  std::vector<std::string>& problems) {
  if (!list.is_array()) {
    problems.push_back(stage + " " + kind + "s: expected a list of tensors, got " + list.dump());
    return;
  }
  for (const json& t : list) {
    TensorEntry e;
    if (!t.is_object() || !t.contains("name") || !t.at("name").is_string() || !t.contains("role") ||
        !t.at("role").is_string()) {
      problems.push_back(stage + " " + kind + "s: expected a tensor with a name and a role, got " + t.dump());
      continue;
    }
    e.name = t.at("name").get<std::string>();
    e.role = t.at("role").get<std::string>();
    e.dtype = opt<std::string>(t, "dtype", "");
    const int64_t layer = t.contains("layer") && t.at("layer").is_number_integer() ? t.at("layer").get<int64_t>() : -1;
    e.layer = layer >= 0 && layer < (1 << 16) ? static_cast<int>(layer) : -1;
    if (t.contains("shape") && t.at("shape").is_array()) {
      for (const json& d : t.at("shape")) e.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
    }
    out.push_back(std::move(e));
  }
}

// role -> name maps and the cache table of one stage; problems as the Python runtime words them
void index_roles(StageEntry& s, int layers, std::vector<std::string>& problems) {
  const Roles& roles = stage_roles().at(s.name);
  const bool decoder = s.name == "decoder";
  if (decoder) s.cache.assign(static_cast<size_t>(std::max(layers, 0)), {});
  for (const TensorEntry& t : s.inputs) {  // the Python runtime also takes float16 (fp16 packages, for GPUs)
    if (decoder && (t.role == "past_key" || t.role == "past_value") && t.dtype != "float32") {
      problems.push_back("decoder: expected a float32 KV cache (libmvgpt's), got " + t.dtype +
                         " (an fp16 package, for GPUs: mvgpt-run runs it; libmvgpt runs fp32, int8 and int4 packages)");
      return;
    }
  }
  const auto side = [&](const std::vector<TensorEntry>& tensors, const std::vector<std::string>& single,
                        std::map<std::string, std::string>& names, const char* kind,
                        const std::array<std::string, 2>& cache_roles, size_t cache_at) {
    const std::string where = s.name + " " + kind + "s";
    for (const TensorEntry& t : tensors) {
      const bool is_single = std::find(single.begin(), single.end(), t.role) != single.end();
      const bool is_cache = decoder && (t.role == cache_roles[0] || t.role == cache_roles[1]);
      if (is_single) {
        if (!names.emplace(t.role, t.name).second) problems.push_back(where + ": expected one tensor with role '" + t.role + "', got two");
      } else if (is_cache) {
        if (t.layer < 0 || t.layer >= layers) {
          problems.push_back(where + " '" + t.name + "': expected a layer in [0, " + std::to_string(layers) + ")");
          continue;
        }
        std::string& slot = s.cache[t.layer][cache_at + (t.role == cache_roles[1] ? 1 : 0)];
        if (!slot.empty()) problems.push_back(where + ": expected one tensor with role '" + t.role + "' for layer " + std::to_string(t.layer) + ", got two");
        slot = t.name;
      } else {
        problems.push_back(where + " '" + t.name + "': expected a known role, got '" + t.role + "'");
      }
    }
    for (const std::string& r : single) {
      if (!names.count(r)) problems.push_back(where + ": expected a tensor with role '" + r + "', got none");
    }
  };
  side(s.inputs, roles.inputs, s.input_names, "input", {"past_key", "past_value"}, 0);
  side(s.outputs, roles.outputs, s.output_names, "output", {"present_key", "present_value"}, 2);
  for (size_t i = 0; i < s.cache.size(); ++i) {
    for (const std::string& name : s.cache[i]) {
      if (name.empty()) {
        problems.push_back(s.name + ": expected the cache tensors of layer " + std::to_string(i) + ", got some missing");
        break;
      }
    }
  }
}

}  // namespace

const char* const kStages[7] = {"clip_vision", "frame_scorer", "video_mamba", "image_projector",
                                "video_projector", "embed_tokens", "decoder"};

const StageEntry& Manifest::stage(const std::string& name) const {
  for (const StageEntry& s : stages) {
    if (s.name == name) return s;
  }
  throw Error(MVGPT_INTERNAL, "no stage " + name);
}

Manifest read_manifest_json(const std::string& folder);

Manifest read_manifest(const std::string& folder) {
  try {
    return read_manifest_json(folder);
  } catch (const json::exception& e) {  // a value of the wrong type
    throw Error(MVGPT_BAD_FORMAT, folder + "/manifest.json: expected values of the types runtime/PACKAGE.md gives, got another (" +
                                      e.what() + "); " + kFix);
  }
}

Manifest read_manifest_json(const std::string& folder) {
  const std::string path = folder + "/manifest.json";
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw Error(MVGPT_NOT_FOUND, "'" + folder + "' is not a model package: expected manifest.json in it, got none; "
                                 "fix: pass a folder written by mvgpt-export");
  }
  json root;
  try {
    root = json::parse(file);
  } catch (const json::exception& e) {
    throw Error(MVGPT_BAD_FORMAT, path + ": expected a JSON manifest, got unreadable content (" + e.what() + "); " + kFix);
  }
  if (!root.is_object()) throw Error(MVGPT_BAD_FORMAT, path + ": expected a JSON object; " + kFix);
  const json version = root.contains("schema_version") ? root.at("schema_version") : json();
  if (!version.is_number_integer() || version.get<int>() != kSchemaVersion) {
    throw Error(MVGPT_BAD_FORMAT, path + ": expected schema_version " + std::to_string(kSchemaVersion) + ", got " +
                                      version.dump() + "; fix: export the package again with this mvgpt version's mvgpt-export");
  }
  Manifest m;
  m.folder = folder;
  Reader r(path);
  static const json empty = json::object();
  const auto section = [&](const char* key) -> const json& {
    const json* v = r.find(root, "", key);
    return v != nullptr && v->is_object() ? *v : empty;
  };
  const json& stages = section("stages");
  const json& pre = section("preprocess");
  const json& sampling = section("sampling");
  const json& prompt = section("prompt");
  const json& tokens = section("tokens");
  const json& generation = section("generation");
  const json& decoder = section("decoder");
  const json& visual = section("visual");
  m.num_layers = r.positive(decoder, "decoder.", "num_hidden_layers");
  m.kv_heads = r.positive(decoder, "decoder.", "num_key_value_heads");
  m.head_dim = r.positive(decoder, "decoder.", "head_dim");
  m.hidden_size = r.positive(decoder, "decoder.", "hidden_size");
  m.vocab_size = r.positive(decoder, "decoder.", "vocab_size");
  m.max_positions = opt_int(decoder, "max_position_embeddings", 0);
  m.num_frames = r.positive(sampling, "sampling.", "num_frames");
  m.chunk_size = r.positive(sampling, "sampling.", "chunk_size");
  m.keep_per_chunk = r.positive(sampling, "sampling.", "num_select_k_frames_in_chunk");
  m.fps = opt<double>(sampling, "fps", 1.0);
  m.num_visual_tokens = r.positive(visual, "visual.", "num_visual_tokens");
  m.template_text = r.get<std::string>(prompt, "prompt.", "template", "");
  m.system = r.get<std::string>(prompt, "prompt.", "system", "");
  m.placeholder = r.get<std::string>(prompt, "prompt.", "image_placeholder", "");
  m.stop_string = r.get<std::string>(prompt, "prompt.", "stop_string", "");
  m.num_placeholders = r.positive(prompt, "prompt.", "num_image_placeholders");
  m.num_sentinels = r.positive(prompt, "prompt.", "num_image_sentinels");
  m.sentinel = r.get<int64_t>(prompt, "prompt.", "image_token_index", -200);
  m.im_end = opt_int(tokens, "im_end", -1);
  m.tokenizer_file = opt<std::string>(root, "tokenizer", "tokenizer.json");
  for (auto [entry, key] : {std::pair<PixelEntry*, const char*>{&m.clip, "clip"}, {&m.video_mamba, "video_mamba"}}) {
    const json* p = r.find(pre, "preprocess.", key);
    if (p == nullptr) continue;
    const std::string where = std::string("preprocess.") + key + ".";
    entry->size = r.positive(*p, where, "size");
    entry->mean = r.get<std::array<double, 3>>(*p, where, "mean", {});
    entry->std = r.get<std::array<double, 3>>(*p, where, "std", {});
    entry->resize = opt<std::string>(*p, "resize", "");
  }
  // generation defaults: the json's; HF's for a sampling key it leaves out, the Python runtime's
  // own (runtime/sampling.py GenerationConfig) for one it gives as null
  const auto sampling_key = [&](const char* key, double absent, double null) {
    if (!generation.contains(key)) return absent;
    return generation.at(key).is_null() ? null : generation.at(key).get<double>();
  };
  m.max_new_tokens = static_cast<int>(std::clamp<int64_t>(opt_int(generation, "max_new_tokens", 1024), 0, INT32_MAX));
  const json eos = generation.contains("eos_token_id") ? generation.at("eos_token_id") : json();
  if (eos.is_number_integer()) m.eos_ids.push_back(eos.get<int64_t>());
  if (eos.is_array()) {
    for (const json& e : eos) {
      if (e.is_number_integer()) m.eos_ids.push_back(e.get<int64_t>());
    }
  }
  if (m.im_end >= 0 && std::find(m.eos_ids.begin(), m.eos_ids.end(), m.im_end) == m.eos_ids.end()) {
    m.eos_ids.push_back(m.im_end);
  }
  m.repetition_penalty = sampling_key("repetition_penalty", 1.0, 1.0);
  m.temperature = sampling_key("temperature", 1.0, 1.0);
  m.top_p = sampling_key("top_p", 1.0, 1.0);
  const double top_k = sampling_key("top_k", 50, 0);
  m.top_k = top_k >= 0 && top_k < 1e9 ? static_cast<int>(top_k) : -1;
  m.random_weights = opt<bool>(opt<json>(root, "source", json::object()), "random_weights", false);
  for (const char* name : kStages) {
    const json* s = r.find(stages, "stages.", name);
    if (s == nullptr || !s->is_object()) continue;
    StageEntry e;
    e.name = name;
    e.file = r.get<std::string>(*s, std::string("stages.") + name + ".", "file", "");
    e.portable_file = opt<std::string>(*s, "portable_file", "");
    const json op = opt<json>(*s, "custom_op", json());
    if (op.is_object()) e.custom_op = opt<std::string>(op, "op_type", "");
    const json config = opt<json>(*s, "session_config", json::object());
    if (config.is_object()) {
      for (const auto& [k, v] : config.items()) {
        if (v.is_string()) e.session_config[k] = v.get<std::string>();
      }
    }
    m.stages.push_back(std::move(e));
  }
  if (m.num_frames > 0 && m.chunk_size > 0 && m.num_frames % m.chunk_size != 0) {
    r.problems.push_back("sampling.num_frames as a multiple of sampling.chunk_size");
  }
  if (m.keep_per_chunk > m.chunk_size) r.problems.push_back("sampling.num_select_k_frames_in_chunk <= chunk_size");
  if (m.num_sentinels > m.num_placeholders) r.problems.push_back("prompt.num_image_sentinels <= num_image_placeholders");
  if (m.placeholder.empty()) r.problems.push_back("prompt.image_placeholder (not empty)");
  if (m.max_new_tokens < 1) r.problems.push_back("generation.max_new_tokens >= 1");
  if (m.eos_ids.empty()) r.problems.push_back("generation.eos_token_id or tokens.im_end");
  if (m.clip.resize.empty()) m.clip.resize = "shortest_side_bicubic_center_crop";  // (Python's default)
  if (!r.problems.empty()) r.raise();
  std::vector<std::string> problems;
  for (StageEntry& e : m.stages) {
    const json& s = stages.at(e.name);
    read_tensors(opt<json>(s, "inputs", json()), e.name, "input", e.inputs, problems);
    read_tensors(opt<json>(s, "outputs", json()), e.name, "output", e.outputs, problems);
    index_roles(e, e.name == "decoder" ? m.num_layers : 0, problems);
  }
  const size_t system_at = m.template_text.find("{system}"), images_at = m.template_text.find("{images}"),
               question_at = m.template_text.find("{question}");
  const auto once = [&](const char* field) {
    const size_t at = m.template_text.find(field);
    return at != std::string::npos && m.template_text.find(field, at + 1) == std::string::npos;
  };
  if (!once("{system}") || !once("{images}") || !once("{question}") || !(system_at < images_at && images_at < question_at)) {
    problems.push_back("prompt.template: expected {system}, {images}, {question} once each, in that order");
  }
  if (!problems.empty()) {
    std::string list;
    for (const auto& p : problems) list += (list.empty() ? "" : "; ") + p;
    throw Error(MVGPT_BAD_FORMAT, path + ": " + std::to_string(problems.size()) + " problems with its stages (" + list + "); " + kFix);
  }
  return m;
}

}  // namespace mvgpt
