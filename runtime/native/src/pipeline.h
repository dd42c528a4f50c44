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
#include "preprocess.h"
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
  // a video file, decoded and sampled as runtime/video.py does (video.h; needs OpenCV)
  std::unique_ptr<Encoding> encode_video(const std::string& path);

  // The steps of an encoding, for frames that arrive one at a time (stream.h):
  // one frame's CLIP and VideoMamba pixels, appended to `clip` and `mamba`
  void preprocess(const FrameView& frame, std::vector<float>& clip, std::vector<float>& mamba) const;
  // clip_vision: (frames, 3, S, S) pixels -> (frames, patches, channels) features
  std::vector<float> clip_features(const std::vector<float>& clip_pixels, int frames, std::vector<int64_t>* shape);
  // the stages after clip_vision on the sampled frames' features and VideoMamba pixels;
  // `positions`: their source frame indices; `seconds`: the stages already timed
  std::unique_ptr<Encoding> encode_features(const std::vector<float>& features, const std::vector<int64_t>& feature_shape,
                                            const std::vector<float>& mamba_pixels, std::vector<int32_t> positions,
                                            std::map<std::string, double> seconds);
  // the prompt's ids before the visual embeddings (the same for every question)
  std::vector<int64_t> prefix_ids() const;
  // Fills `encoding`'s kept KV cache with [prefix ids, visual], `step` positions per decoder run;
  // each run is made through `each_run` (which may hold a lock around it).
  void prefill_prefix(Encoding& encoding, int step, const std::function<void(const std::function<void()>&)>& each_run);
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
  std::unique_ptr<Encoding> encode_sampled(const std::vector<FrameView>& frames, std::vector<int32_t> positions, double start);
  // (prefix, suffix): a prompt's ids before and after its one run of visual sentinels
  std::pair<std::vector<int64_t>, std::vector<int64_t>> split_prompt(const std::vector<int64_t>& ids) const;
  Model model_;
  Tokenizer tokenizer_;
};

// Frame positions sampled from a video of `count` frames at `fps`, as runtime/video.py does
// (sample_positions, then pad_positions to `num_frames`).
std::vector<int32_t> sample_positions(int count, double fps, int num_frames, double target_fps);

}  // namespace mvgpt
