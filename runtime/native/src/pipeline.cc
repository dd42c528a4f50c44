#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "preprocess.h"
#include "status.h"
#include "utf8.h"
#include "video.h"

namespace mvgpt {
namespace {

constexpr int kPrefillChunk = 256;  // positions per prefill run (runtime/decoder.py)

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Python's str.isspace() characters (str.strip() and lstrip() remove these)
bool python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::vector<std::pair<size_t, char32_t>> code_points(const std::string& text) {  // (byte offset, cp)
  std::vector<std::pair<size_t, char32_t>> out;
  for (size_t i = 0; i < text.size();) {
    const size_t n = std::max<size_t>(1, utf8::sequence_length(text, i));
    out.emplace_back(i, utf8::decode(text, i, n));
    i += n;
  }
  return out;
}

std::string lstrip(const std::string& text) {
  for (const auto& [at, c] : code_points(text)) {
    if (!python_space(c)) return text.substr(at);
  }
  return std::string();
}

std::string strip(const std::string& text) {
  std::string s = lstrip(text);
  const auto cps = code_points(s);
  size_t end = s.size();
  for (auto it = cps.rbegin(); it != cps.rend() && python_space(it->second); ++it) end = it->first;
  return s.substr(0, end);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// runtime/textstream.py: emits only text whose bytes are complete
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, const std::function<bool(const std::string&)>& callback)
      : tokenizer_(tokenizer), callback_(callback) {}

  bool push(int32_t token) {
    tokens_.push_back(token);
    const std::string before = decode(prefix_, read_);
    const std::string text = decode(prefix_, tokens_.size());
    const size_t before_len = code_points(before).size();
    const auto cps = code_points(text);
    if (cps.size() <= before_len || ends_with(text, "\xEF\xBF\xBD")) return true;  // wait for more bytes
    std::string fresh = text.substr(cps[before_len].first);
    prefix_ = read_;
    read_ = tokens_.size();
    if (!started_) {
      fresh = lstrip(fresh);
      started_ = !fresh.empty();
    }
    return fresh.empty() || callback_(fresh);
  }
  void finish() {
    const std::string emitted = decode(prefix_, read_);
    const std::string all = decode(prefix_, tokens_.size());
    const auto cps = code_points(all);
    const size_t emitted_len = code_points(emitted).size();
    std::string held = emitted_len < cps.size() ? all.substr(cps[emitted_len].first) : std::string();
    if (!started_) held = lstrip(held);
    if (!held.empty()) callback_(held);
  }

 private:
  std::string decode(size_t from, size_t to) const {
    return tokenizer_.decode(tokens_.data() + from, to - from, true);
  }
  const Tokenizer& tokenizer_;
  const std::function<bool(const std::string&)>& callback_;
  std::vector<int32_t> tokens_;
  size_t prefix_ = 0, read_ = 0;
  bool started_ = false;
};

struct Generation {
  int max_new_tokens;
  bool greedy;
  double temperature, top_p, repetition_penalty;
  int top_k;
  std::vector<int64_t> eos;
};

// runtime/sampling.py's Sampler: repetition penalty (also greedy), then argmax, or temperature ->
// top-k -> top-p -> a draw (a std::mt19937_64 draw: seeded answers do not repeat numpy's).
class Sampler {
 public:
  Sampler(const Generation& g, uint64_t seed) : g_(g), rng_(seed) {}
  int32_t next(const float* logits, size_t vocab, const std::vector<int32_t>& generated) {
    std::vector<float> scores(logits, logits + vocab);
    if (g_.repetition_penalty != 1.0 && !generated.empty()) {
      std::vector<int32_t> seen(generated);
      std::sort(seen.begin(), seen.end());
      seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
      const float penalty = static_cast<float>(g_.repetition_penalty);
      for (int32_t t : seen) {
        if (t >= 0 && static_cast<size_t>(t) < vocab) scores[t] = scores[t] < 0 ? scores[t] * penalty : scores[t] / penalty;
      }
    }
    if (g_.greedy) return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
    const float inf = -std::numeric_limits<float>::infinity();
    if (g_.temperature != 1.0) {
      for (float& s : scores) s = s / static_cast<float>(g_.temperature);
    }
    if (g_.top_k > 0 && static_cast<size_t>(g_.top_k) < vocab) {
      std::vector<float> sorted(scores);
      std::nth_element(sorted.begin(), sorted.begin() + (vocab - g_.top_k), sorted.end());
      const float kth = sorted[vocab - g_.top_k];
      for (float& s : scores) s = s < kth ? inf : s;
    }
    if (g_.top_p < 1.0) {
      std::vector<size_t> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
      const float top = scores[order.back()];
      std::vector<double> probs(vocab);
      double total = 0;
      for (size_t i = 0; i < vocab; ++i) total += probs[i] = std::exp(static_cast<double>(scores[order[i]] - top));
      double cumulative = 0;
      for (size_t i = 0; i + 1 < vocab; ++i) {
        cumulative += probs[i] / total;
        if (cumulative <= 1.0 - g_.top_p) scores[order[i]] = inf;
      }
    }
    const float top = *std::max_element(scores.begin(), scores.end());
    std::vector<double> cumulative(vocab);
    double sum = 0;
    for (size_t i = 0; i < vocab; ++i) cumulative[i] = sum += std::exp(static_cast<double>(scores[i]) - top);
    const double draw = std::uniform_real_distribution<double>(0.0, 1.0)(rng_) * sum;
    const size_t at = std::upper_bound(cumulative.begin(), cumulative.end(), draw) - cumulative.begin();
    return static_cast<int32_t>(std::min(at, vocab - 1));
  }
  bool is_eos(int32_t token) const { return std::find(g_.eos.begin(), g_.eos.end(), token) != g_.eos.end(); }

 private:
  const Generation& g_;
  std::mt19937_64 rng_;
};

// The KV cache: one buffer per layer for keys and one for values, (1, kv_heads, capacity,
// head_dim), bound as both past and present of every decoder run (written in place).
class Decoder {
 public:
  Decoder(Model& model, int capacity)
      : model_(model), m_(model.manifest()), stage_(m_.stage("decoder")), capacity_(capacity) {
    const size_t per = static_cast<size_t>(m_.kv_heads) * capacity * m_.head_dim;
    buffers_.assign(static_cast<size_t>(m_.num_layers) * 2 * per, 0.0f);
    const std::array<int64_t, 4> shape = {1, m_.kv_heads, capacity, m_.head_dim};
    for (int i = 0; i < m_.num_layers * 2; ++i) {
      values_.push_back(Ort::Value::CreateTensor<float>(model.cpu(), buffers_.data() + i * per, per, shape.data(), 4));
    }
    logits_.assign(static_cast<size_t>(m_.vocab_size), 0.0f);
    const std::array<int64_t, 3> logits_shape = {1, 1, m_.vocab_size};
    logits_value_ = Ort::Value::CreateTensor<float>(model.cpu(), logits_.data(), logits_.size(), logits_shape.data(), 3);
    // the cache and the logits stay bound for every run; each run binds its embeds and mask
    binding_ = std::make_unique<Ort::IoBinding>(model.session("decoder"));
    for (int i = 0; i < m_.num_layers; ++i) {
      const auto& names = stage_.cache[i];  // past key, past value, present key, present value
      binding_->BindInput(names[0].c_str(), values_[2 * i]);
      binding_->BindInput(names[1].c_str(), values_[2 * i + 1]);
      binding_->BindOutput(names[2].c_str(), values_[2 * i]);
      binding_->BindOutput(names[3].c_str(), values_[2 * i + 1]);
    }
    binding_->BindOutput(stage_.output_names.at("logits").c_str(), logits_value_);
    keep_value_ = Ort::Value::CreateTensor<int64_t>(model.cpu(), &keep_last_, 1, nullptr, 0);
    binding_->BindInput(stage_.input_names.at("num_logits_to_keep").c_str(), keep_value_);
  }
  int length() const { return length_; }

  // one run over (S, hidden) embeds after the cached positions; returns the last position's logits
  const float* run(const float* embeds, int positions) {
    const int total = length_ + positions;
    if (total > capacity_) {
      throw Error(MVGPT_INVALID_ARGUMENT, "KV cache: expected at most " + std::to_string(capacity_) + " positions, got " +
                                              std::to_string(total) + "; fix: lower max_new_tokens");
    }
    const std::array<int64_t, 3> shape = {1, positions, m_.hidden_size};
    Ort::Value x = Ort::Value::CreateTensor<float>(model_.cpu(), const_cast<float*>(embeds),
                                                   static_cast<size_t>(positions) * m_.hidden_size, shape.data(), 3);
    mask_.assign(static_cast<size_t>(total), 1);
    const std::array<int64_t, 2> mask_shape = {1, total};
    Ort::Value mask = Ort::Value::CreateTensor<int64_t>(model_.cpu(), mask_.data(), mask_.size(), mask_shape.data(), 2);
    binding_->BindInput(stage_.input_names.at("inputs_embeds").c_str(), x);
    binding_->BindInput(stage_.input_names.at("attention_mask").c_str(), mask);
    model_.session("decoder").Run(Ort::RunOptions{nullptr}, *binding_);
    length_ = total;
    return logits_.data();
  }
  const float* prefill(const std::vector<float>& embeds) {
    const int positions = static_cast<int>(embeds.size() / m_.hidden_size);
    const float* logits = nullptr;
    for (int start = 0; start < positions; start += kPrefillChunk) {
      logits = run(embeds.data() + static_cast<size_t>(start) * m_.hidden_size, std::min(kPrefillChunk, positions - start));
    }
    return logits;
  }
  // copies of the positions in use, (layers, 2, kv_heads, length, head_dim), and back
  std::vector<float> snapshot() const {
    std::vector<float> out;
    each_row([&](const float* row, size_t n) { out.insert(out.end(), row, row + n); });
    return out;
  }
  void load(const std::vector<float>& saved, int positions) {
    const size_t need = static_cast<size_t>(m_.num_layers) * 2 * m_.kv_heads * static_cast<size_t>(positions) * m_.head_dim;
    if (positions < 0 || positions > capacity_ || saved.size() != need) {
      throw Error(MVGPT_INTERNAL, "KV cache: the kept prefix does not fit this cache");
    }
    length_ = positions;
    size_t at = 0;
    each_row([&](const float* row, size_t n) {
      std::memcpy(const_cast<float*>(row), saved.data() + at, n * sizeof(float));
      at += n;
    });
  }

 private:
  template <typename F>
  void each_row(F&& f) const {
    const size_t per = static_cast<size_t>(m_.kv_heads) * capacity_ * m_.head_dim;
    for (int b = 0; b < m_.num_layers * 2; ++b) {
      for (int h = 0; h < m_.kv_heads; ++h) {
        f(buffers_.data() + b * per + static_cast<size_t>(h) * capacity_ * m_.head_dim, static_cast<size_t>(length_) * m_.head_dim);
      }
    }
  }
  Model& model_;
  const Manifest& m_;
  const StageEntry& stage_;
  int capacity_;
  int length_ = 0;
  std::vector<float> buffers_, logits_;
  std::vector<Ort::Value> values_;
  Ort::Value logits_value_{nullptr}, keep_value_{nullptr};
  std::unique_ptr<Ort::IoBinding> binding_;
  std::vector<int64_t> mask_;
  int64_t keep_last_ = 1;
};

}  // namespace

std::vector<int32_t> sample_positions(int count, double fps, int num_frames, double target_fps) {
  if (count < 1) {
    throw Error(MVGPT_INVALID_ARGUMENT, "cannot sample frames: expected a video with at least 1 frame, got " +
                                            std::to_string(count) + "; fix: use a video that has decodable frames");
  }
  if (!(std::isfinite(fps) && fps > 0)) fps = 30.0;
  const int stride = std::max(1, static_cast<int>(std::nearbyint(fps / target_fps)));  // (half to even, as round())
  std::vector<int32_t> all;
  for (int p = 0; p < count; p += stride) all.push_back(p);
  std::vector<int32_t> positions;
  const int n = static_cast<int>(all.size());
  if (n > num_frames) {
    const double step = num_frames > 1 ? static_cast<double>(n - 1) / (num_frames - 1) : 0.0;
    for (int i = 0; i < num_frames; ++i) {
      // numpy's linspace: i * step, the last one exactly n - 1 (one frame: 0)
      const double y = num_frames == 1 ? 0.0 : i == num_frames - 1 ? static_cast<double>(n - 1) : i * step;
      positions.push_back(all[static_cast<size_t>(y)]);
    }
  } else if (n == num_frames) {
    positions = all;
  } else {
    const int wanted = std::min(num_frames, count);
    if (wanted == 1) {
      positions = {0};
    } else {
      const int s = std::max(1, (count - 1) / (wanted - 1));
      for (int p = 0; p <= s * (wanted - 1); p += s) positions.push_back(p);
    }
  }
  const int have = static_cast<int>(positions.size());
  if (have == 0 || have >= num_frames) return positions;
  std::vector<int32_t> padded;
  for (int i = 0; i < num_frames; ++i) padded.push_back(positions[static_cast<size_t>(i) * have / num_frames]);
  return padded;
}

Pipeline::Pipeline(const std::string& folder, const ModelOptions& options)
    : model_(folder, options), tokenizer_(folder + "/" + model_.manifest().tokenizer_file) {
  const Manifest& m = model_.manifest();
  if (m.clip.resize != "shortest_side_bicubic_center_crop" && m.clip.resize != "squash_bicubic") {
    throw Error(MVGPT_UNSUPPORTED, folder + ": expected preprocess.clip.resize shortest_side_bicubic_center_crop or squash_bicubic, got '" +
                                       m.clip.resize + "'; fix: re-export the package with this version of mvgpt");
  }
  if (!m.video_mamba.resize.empty() && m.video_mamba.resize != "squash_bilinear") {
    throw Error(MVGPT_UNSUPPORTED, folder + ": expected preprocess.video_mamba.resize squash_bilinear, got '" + m.video_mamba.resize +
                                       "'; fix: re-export the package with this version of mvgpt");
  }
}

std::vector<float> Pipeline::run(const std::string& stage, const std::string& input_role, const std::vector<float>& input_data,
                                 const std::vector<int64_t>& shape, const std::string& output_role,
                                 std::vector<int64_t>* out_shape) {
  const StageEntry& entry = model_.manifest().stage(stage);
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(std::max<int64_t>(d, 0));
  if (count != input_data.size()) {  // (a graph whose output had another shape than the manifest's)
    throw Error(MVGPT_BAD_FORMAT, stage + ": expected " + std::to_string(count) + " input values, got " +
                                      std::to_string(input_data.size()) + "; fix: re-export the package with mvgpt-export");
  }
  const float* data = input_data.data();
  Ort::Value input = Ort::Value::CreateTensor<float>(model_.cpu(), const_cast<float*>(data), count, shape.data(), shape.size());
  const char* in_name = entry.input_names.at(input_role).c_str();
  const char* out_name = entry.output_names.at(output_role).c_str();
  auto outputs = model_.session(stage).Run(Ort::RunOptions{nullptr}, &in_name, &input, 1, &out_name, 1);
  auto info = outputs[0].GetTensorTypeAndShapeInfo();
  if (out_shape != nullptr) *out_shape = info.GetShape();
  const float* result = outputs[0].GetTensorData<float>();
  return std::vector<float>(result, result + info.GetElementCount());
}

std::vector<float> Pipeline::embed(const std::vector<int64_t>& ids) {
  const StageEntry& entry = model_.manifest().stage("embed_tokens");
  std::vector<int64_t> copy(ids);
  const std::array<int64_t, 2> shape = {1, static_cast<int64_t>(ids.size())};
  Ort::Value input = Ort::Value::CreateTensor<int64_t>(model_.cpu(), copy.data(), copy.size(), shape.data(), 2);
  const char* in_name = entry.input_names.at("input_ids").c_str();
  const char* out_name = entry.output_names.at("inputs_embeds").c_str();
  auto outputs = model_.session("embed_tokens").Run(Ort::RunOptions{nullptr}, &in_name, &input, 1, &out_name, 1);
  const float* result = outputs[0].GetTensorData<float>();
  return std::vector<float>(result, result + outputs[0].GetTensorTypeAndShapeInfo().GetElementCount());
}

std::unique_ptr<Encoding> Pipeline::encode_frames(const uint8_t* rgb, int num_frames, int height, int width) {
  if (rgb == nullptr || num_frames < 1 || height < 1 || width < 1) {
    throw Error(MVGPT_INVALID_ARGUMENT, "frames: expected at least one (height, width, 3) uint8 RGB frame, got " +
                                            std::to_string(num_frames) + " frames of " + std::to_string(height) + "x" +
                                            std::to_string(width) + "; fix: pass decoded RGB frames");
  }
  const double start = now();
  const Manifest& m = model_.manifest();
  std::vector<int32_t> positions = sample_positions(num_frames, 1.0, m.num_frames, 1.0);  // one frame per second
  const size_t frame_bytes = static_cast<size_t>(height) * width * 3;
  std::vector<FrameView> views;
  for (int index : positions) views.push_back(FrameView{rgb + static_cast<size_t>(index) * frame_bytes, height, width});
  return encode_sampled(views, std::move(positions), start);
}

std::unique_ptr<Encoding> Pipeline::encode_video(const std::string& path) {
  const double start = now();
  const Manifest& m = model_.manifest();
  VideoFrames video = read_video(path, m.num_frames, 1.0);
  const size_t frame_bytes = static_cast<size_t>(video.height) * video.width * 3;
  std::vector<FrameView> views;
  for (size_t i = 0; i < video.positions.size(); ++i) {
    views.push_back(FrameView{video.rgb.data() + i * frame_bytes, video.height, video.width});
  }
  return encode_sampled(views, std::move(video.positions), start);
}

void Pipeline::preprocess(const FrameView& frame, std::vector<float>& clip, std::vector<float>& mamba) const {
  const Manifest& m = model_.manifest();
  preprocess_clip(frame, m.clip.size, m.clip.resize == "shortest_side_bicubic_center_crop", m.clip.mean, m.clip.std, clip);
  preprocess_video_mamba(frame, m.video_mamba.size, m.video_mamba.mean, m.video_mamba.std, mamba);
}

std::vector<float> Pipeline::clip_features(const std::vector<float>& clip_pixels, int frames, std::vector<int64_t>* shape) {
  const int64_t s = model_.manifest().clip.size;
  std::vector<float> features = run("clip_vision", "pixel_values", clip_pixels, {frames, 3, s, s}, "image_features", shape);
  if (shape->size() != 3 || (*shape)[0] != frames) {
    throw Error(MVGPT_BAD_FORMAT, "clip_vision: expected (frames, patches, channels) features; fix: re-export the package");
  }
  return features;
}

std::unique_ptr<Encoding> Pipeline::encode_sampled(const std::vector<FrameView>& views, std::vector<int32_t> positions, double start) {
  const Manifest& m = model_.manifest();
  const int frames = static_cast<int>(views.size());
  if (frames != m.num_frames || positions.size() != views.size()) {
    throw Error(MVGPT_INTERNAL, "frame sampling gave " + std::to_string(frames) + " frames");
  }
  std::vector<float> clip_pixels, mamba_pixels;
  for (const FrameView& view : views) preprocess(view, clip_pixels, mamba_pixels);
  std::map<std::string, double> seconds;
  const double t1 = now();
  seconds["decode_video"] = t1 - start;
  std::vector<int64_t> feature_shape;
  std::vector<float> features = clip_features(clip_pixels, frames, &feature_shape);
  seconds["clip_vision"] = now() - t1;
  return encode_features(features, feature_shape, mamba_pixels, std::move(positions), std::move(seconds));
}

std::unique_ptr<Encoding> Pipeline::encode_features(const std::vector<float>& features, const std::vector<int64_t>& feature_shape,
                                                    const std::vector<float>& mamba_pixels, std::vector<int32_t> positions,
                                                    std::map<std::string, double> seconds) {
  const Manifest& m = model_.manifest();
  const int frames = static_cast<int>(positions.size());
  const int64_t ms = m.video_mamba.size, plane = ms * ms;
  if (feature_shape.size() != 3 || feature_shape[0] != frames || frames != m.num_frames ||
      mamba_pixels.size() != static_cast<size_t>(frames * 3 * plane)) {
    throw Error(MVGPT_INTERNAL, "encode_features: expected the features and pixels of " + std::to_string(m.num_frames) + " frames");
  }
  auto enc = std::make_unique<Encoding>();
  enc->frame_indices = std::move(positions);
  enc->seconds = std::move(seconds);
  const double t2 = now();
  const int64_t patches = feature_shape.at(1), dim = feature_shape.at(2);
  const int chunks = frames / m.chunk_size;
  std::vector<int64_t> score_shape;
  std::vector<float> scores = run("frame_scorer", "image_features", features, {chunks, m.chunk_size * patches, dim}, "frame_scores", &score_shape);
  if (score_shape != std::vector<int64_t>{chunks, m.chunk_size}) {
    throw Error(MVGPT_BAD_FORMAT, "frame_scorer: expected (chunks, chunk_size) scores; fix: re-export the package");
  }
  for (int c = 0; c < chunks; ++c) {  // the top keep_per_chunk per chunk, ties to the earlier, in time order
    std::vector<int> order(static_cast<size_t>(m.chunk_size));
    std::iota(order.begin(), order.end(), 0);
    const float* row = scores.data() + static_cast<size_t>(c) * m.chunk_size;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    order.resize(static_cast<size_t>(m.keep_per_chunk));
    std::sort(order.begin(), order.end());
    for (int k : order) enc->selected_frames.push_back(c * m.chunk_size + k);
  }
  const double t3 = now();
  enc->seconds["frame_scorer"] = t3 - t2;
  const int64_t selected = static_cast<int64_t>(enc->selected_frames.size());
  std::vector<float> clip(static_cast<size_t>(3 * selected * plane));
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t t = 0; t < selected; ++t) {
      const float* from = mamba_pixels.data() + (static_cast<size_t>(enc->selected_frames[t]) * 3 + c) * plane;
      std::copy_n(from, plane, clip.data() + (c * selected + t) * plane);
    }
  }
  std::vector<int64_t> video_shape;
  std::vector<float> video = run("video_mamba", "pixel_values", clip, {1, 3, selected, ms, ms}, "video_features", &video_shape);
  const double t4 = now();
  enc->seconds["video_mamba"] = t4 - t3;
  std::vector<float> image_tokens = run("image_projector", "image_features", features, feature_shape, "image_tokens", nullptr);
  std::vector<float> video_tokens = run("video_projector", "video_features", video, video_shape, "video_tokens", nullptr);
  enc->visual = std::move(image_tokens);
  enc->visual.insert(enc->visual.end(), video_tokens.begin(), video_tokens.end());
  enc->seconds["projectors"] = now() - t4;
  if (enc->visual.size() != static_cast<size_t>(m.num_visual_tokens) * m.hidden_size) {
    throw Error(MVGPT_BAD_FORMAT, "visual embeddings: expected " + std::to_string(m.num_visual_tokens) + " (manifest), got " +
                                      std::to_string(enc->visual.size() / m.hidden_size) + "; fix: re-export the package");
  }
  return enc;
}

std::vector<int64_t> Pipeline::prompt_ids(const std::string& question) const {
  if (strip(question).empty()) {
    throw Error(MVGPT_INVALID_ARGUMENT, "empty question: expected a non-empty question about the video, got '" + question +
                                            "'; fix: pass a question, e.g. \"What happens in this video?\"");
  }
  const Manifest& m = model_.manifest();
  std::string images;
  for (int i = 0; i < m.num_placeholders; ++i) images += m.placeholder;
  const std::string& t = m.template_text;
  const size_t a = t.find("{system}"), b = t.find("{images}"), c = t.find("{question}");
  const std::string text = t.substr(0, a) + m.system + t.substr(a + 8, b - a - 8) + images + t.substr(b + 8, c - b - 8) + question +
                           t.substr(c + 10);
  std::vector<int64_t> ids;
  size_t start = 0;
  int sentinels = 0;
  while (true) {  // pieces between placeholders, each tokenized on its own; the first k sentinels kept
    const size_t at = text.find(m.placeholder, start);
    const std::string piece = text.substr(start, at == std::string::npos ? std::string::npos : at - start);
    if (!piece.empty()) {
      for (int32_t id : tokenizer_.encode(piece)) ids.push_back(id);
    }
    if (at == std::string::npos) break;
    if (++sentinels <= m.num_sentinels) ids.push_back(m.sentinel);
    start = at + m.placeholder.size();
  }
  return ids;
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> Pipeline::split_prompt(const std::vector<int64_t>& ids) const {
  const int64_t sentinel = model_.manifest().sentinel;
  const auto first = std::find(ids.begin(), ids.end(), sentinel);
  const auto last = std::find_if(first, ids.end(), [&](int64_t t) { return t != sentinel; });
  if (first == ids.end() || std::find(last, ids.end(), sentinel) != ids.end()) {
    throw Error(MVGPT_INVALID_ARGUMENT, "prompt ids: expected one contiguous run of image sentinels (" +
                                            std::to_string(sentinel) + "); fix: check the package's prompt template");
  }
  return {std::vector<int64_t>(ids.begin(), first), std::vector<int64_t>(last, ids.end())};
}

std::vector<int64_t> Pipeline::prefix_ids() const { return split_prompt(prompt_ids("?")).first; }

namespace {

// [prefix, visual] (`embeds`: the prefix ids' embeddings) into the empty `decoder`, `step`
// positions per run, each made through `each_run` (nullptr: directly); then a copy of its cache
// kept with `encoding` for the next questions (the encoding changes only once the copy is whole).
void prefill_shared(Decoder& decoder, std::vector<float> embeds, Encoding& encoding, const std::vector<int64_t>& prefix, int step,
                    const std::function<void(const std::function<void()>&)>& each_run, int64_t hidden) {
  embeds.insert(embeds.end(), encoding.visual.begin(), encoding.visual.end());
  const int positions = static_cast<int>(embeds.size() / static_cast<size_t>(hidden));
  for (int start = 0; start < positions; start += step) {
    const auto run = [&] { decoder.run(embeds.data() + static_cast<size_t>(start) * hidden, std::min(step, positions - start)); };
    if (each_run) {
      each_run(run);
    } else {
      run();
    }
  }
  std::vector<float> kept = decoder.snapshot();
  encoding.shared_positions = 0;
  encoding.shared_ids.clear();
  encoding.shared_cache = std::move(kept);
  encoding.shared_positions = decoder.length();
  encoding.shared_ids = prefix;
}

}  // namespace

void Pipeline::prefill_prefix(Encoding& encoding, int step, const std::function<void(const std::function<void()>&)>& each_run) {
  const Manifest& m = model_.manifest();
  const std::vector<int64_t> prefix = prefix_ids();
  Decoder decoder(model_, static_cast<int>(prefix.size() + encoding.visual.size() / static_cast<size_t>(m.hidden_size)));
  prefill_shared(decoder, embed(prefix), encoding, prefix, step, each_run, m.hidden_size);
}

Answer Pipeline::answer(Encoding& encoding, const std::string& question, const AnswerOptions& options,
                        const std::function<bool(const std::string&)>& on_text) {
  const double start = now();
  const Manifest& m = model_.manifest();
  const std::vector<int64_t> ids = prompt_ids(question);
  Generation g;
  g.max_new_tokens = options.max_new_tokens > 0 ? options.max_new_tokens : m.max_new_tokens;
  g.greedy = !(options.temperature && *options.temperature > 0);
  g.temperature = options.temperature.value_or(m.temperature);
  g.top_p = options.top_p.value_or(m.top_p);
  g.top_k = options.top_k.value_or(m.top_k);
  g.repetition_penalty = options.repetition_penalty.value_or(m.repetition_penalty);
  g.eos = m.eos_ids;
  if (!(g.repetition_penalty > 0 && std::isfinite(g.repetition_penalty)) || !(g.top_p > 0 && g.top_p <= 1) || g.top_k < 0 ||
      !(g.temperature >= 0 && std::isfinite(g.temperature))) {
    throw Error(MVGPT_INVALID_ARGUMENT, "generation options: expected repetition_penalty > 0, top_p in (0, 1], top_k >= 0, "
                                        "temperature >= 0; fix: change the answer options");
  }
  const auto [prefix, suffix] = split_prompt(ids);
  if (suffix.empty()) {
    throw Error(MVGPT_INVALID_ARGUMENT, "prompt: expected text after the visual embeddings, got none; fix: check the "
                                        "question and the package's prompt template");
  }
  const int64_t prompt_length = static_cast<int64_t>(prefix.size()) + m.num_visual_tokens + static_cast<int64_t>(suffix.size());
  int64_t limit = g.max_new_tokens;
  if (m.max_positions > 0) {
    if (prompt_length >= m.max_positions) {
      throw Error(MVGPT_INVALID_ARGUMENT, "prompt too long: expected fewer than " + std::to_string(m.max_positions) +
                                              " positions, got " + std::to_string(prompt_length) + "; fix: ask a shorter question");
    }
    limit = std::min<int64_t>(limit, m.max_positions - prompt_length);
  }
  if (prompt_length + limit > (int64_t{1} << 24)) {
    throw Error(MVGPT_INVALID_ARGUMENT, "KV cache: expected at most 2^24 positions, got " + std::to_string(prompt_length + limit) +
                                            "; fix: lower max_new_tokens");
  }
  Answer result;
  const double t0 = now();
  Decoder decoder(model_, static_cast<int>(prompt_length + limit));
  if (!encoding.shared_ids.empty() && encoding.shared_ids == prefix) {
    decoder.load(encoding.shared_cache, encoding.shared_positions);
    result.encoding_reused = true;
  } else {
    prefill_shared(decoder, embed(prefix), encoding, prefix, kPrefillChunk, nullptr, m.hidden_size);
  }
  const float* logits = decoder.prefill(embed(suffix));
  const double t1 = now();
  result.seconds["prefill"] = t1 - t0;
  std::unique_ptr<TextStream> stream;
  if (on_text) stream = std::make_unique<TextStream>(tokenizer_, on_text);
  Sampler sampler(g, options.seed.value_or(std::random_device{}()));
  double first_at = -1, step_seconds = 0;
  int steps = 0;
  std::vector<int32_t>& out = result.token_ids;
  while (static_cast<int64_t>(out.size()) < limit) {
    const int32_t token = sampler.next(logits, static_cast<size_t>(m.vocab_size), out);
    if (sampler.is_eos(token)) break;
    out.push_back(token);
    if (first_at < 0) first_at = now();
    if (stream && !stream->push(token)) break;  // the caller stopped the answer
    if (static_cast<int64_t>(out.size()) == limit) break;
    const double ts = now();
    logits = decoder.run(embed({token}).data(), 1);
    step_seconds += now() - ts;
    ++steps;
  }
  if (stream) stream->finish();
  result.seconds["decode"] = now() - t1;
  result.ttft_s = (first_at >= 0 ? first_at : now()) - start;
  if (steps > 0 && step_seconds > 0) result.decode_tokens_per_s = steps / step_seconds;
  std::string text = strip(tokenizer_.decode(out.data(), out.size(), true));
  if (!m.stop_string.empty() && ends_with(text, m.stop_string)) text = strip(text.substr(0, text.size() - m.stop_string.size()));
  result.text = text;
  return result;
}

}  // namespace mvgpt
