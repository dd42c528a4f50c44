// The pipeline, as runtime/pipeline.py runs it: frames -> both streams' pixels -> clip_vision ->
// frame_scorer -> top-k frames per chunk (time order) -> video_mamba -> projectors -> visual
// embeddings (an Encoding, reusable for several questions); question -> ChatML prompt ids with the
// sentinel run -> embed_tokens -> [prefix, visual] prefilled, then the question's own ids, in runs
// of at most 256 positions -> one decoder run per token with the KV cache bound in place
// (IoBinding) -> the sampler; text streamed at complete UTF-8 characters.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model.h"
#include "tokenizer.h"

namespace mvgpt {

struct Encoding {
  std::vector<float> visual;  // (num_visual_tokens, hidden)
  std::vector<int32_t> frame_indices, selected_frames;
  std::map<std::string, double> seconds;  // decode_video (0 for frames in memory) ... projectors
  // the KV cache after [prompt prefix, visual] of the first answer, for the next questions
  std::vector<int64_t> shared_ids;
  std::vector<float> shared_cache;  // (layers, 2, kv_heads, positions, head_dim)
  int shared_positions = 0;
};

struct AnswerOptions {
  int max_new_tokens = 0;                   // 0: the package's default
  std::optional<double> temperature;        // > 0: sampling; else greedy (mvgpt-run's default)
  std::optional<double> top_p;
  std::optional<int> top_k;
  std::optional<double> repetition_penalty;  // absent: the package's
  std::optional<uint64_t> seed;
};

struct Answer {
  std::string text;
  std::vector<int32_t> token_ids;
  std::map<std::string, double> seconds;  // prefill, decode (and the encoding's, when it was made for it)
  double ttft_s = 0.0;
  std::optional<double> decode_tokens_per_s;
  bool encoding_reused = false;
};

class Pipeline {
 public:
  Pipeline(const std::string& folder, const ModelOptions& options);

  // frames: (num_frames, height, width, 3) uint8 RGB in memory; each counts as one second
  std::unique_ptr<Encoding> encode_frames(const uint8_t* rgb, int num_frames, int height, int width);
  // `on_text` hears each piece of the answer as it is decided; returning false stops the answer
  Answer answer(Encoding& encoding, const std::string& question, const AnswerOptions& options,
                const std::function<bool(const std::string&)>& on_text);

  std::vector<int64_t> prompt_ids(const std::string& question) const;
  const Model& model() const { return model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  std::vector<float> run(const std::string& stage, const std::string& input_role, const std::vector<float>& data,
                         const std::vector<int64_t>& shape, const std::string& output_role, std::vector<int64_t>* out_shape);
  std::vector<float> embed(const std::vector<int64_t>& ids);
  Model model_;
  Tokenizer tokenizer_;
};

// Frame positions sampled from a video of `count` frames at `fps`, as runtime/video.py does
// (sample_positions, then pad_positions to `num_frames`).
std::vector<int32_t> sample_positions(int count, double fps, int num_frames, double target_fps);

}  // namespace mvgpt
