// The C API: converts arguments, forwards to the classes, and turns every exception into a status
// and this thread's last message. No exception leaves this file.
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <memory>
#include <new>
#include <string>

#include <nlohmann/json.hpp>

#include "mvgpt.h"
#include "pipeline.h"
#include "status.h"
#include "stream.h"
#include "video.h"
#include "tokenizer.h"

struct mvgpt_tokenizer {
  mvgpt::Tokenizer impl;
  explicit mvgpt_tokenizer(const std::string& path) : impl(path) {}
};

struct mvgpt_model {
  mvgpt::Pipeline impl;
  std::string notes;
  mvgpt_model(const std::string& path, const mvgpt::ModelOptions& options) : impl(path, options) {
    for (const auto& note : impl.model().notes()) notes += note + "\n";
  }
};

struct mvgpt_encoding {
  std::unique_ptr<mvgpt::Encoding> impl;
  const mvgpt_model* owner = nullptr;  // (its kept KV cache is that model's)
  size_t hidden = 0;
  bool answered = false;  // (its stages' seconds go with its first answer, as mvgpt-run reports)
};

struct mvgpt_answer {
  mvgpt::Answer impl;
  std::string json;
};

struct mvgpt_stream {
  mvgpt_model* model = nullptr;
  std::unique_ptr<mvgpt::Stream> impl;
};

namespace {

thread_local std::string last_error;

// (noexcept: a message that cannot be stored leaves a fixed one)
mvgpt_status fail(mvgpt_status status, const std::string& message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();  // (clearing never allocates)
  }
  return status;
}


// Every C API body runs in here: any exception becomes a status and this thread's message.
template <typename F>
mvgpt_status guarded(F&& body) noexcept {
  last_error.clear();
  try {
    return body();
  } catch (const mvgpt::Error& e) {
    return fail(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return fail(MVGPT_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(MVGPT_INTERNAL, e.what());
  } catch (...) {
    return fail(MVGPT_INTERNAL, "unknown error");
  }
}

[[noreturn]] void null_argument(const char* name) {
  throw mvgpt::Error(MVGPT_INVALID_ARGUMENT, std::string(name) + ": expected a pointer, got NULL");
}

mvgpt::AnswerOptions answer_options(const mvgpt_answer_params* params) {
  const mvgpt_answer_params p = params != nullptr ? *params : mvgpt_answer_default_params();
  if (p.max_new_tokens < 0) {
    throw mvgpt::Error(MVGPT_INVALID_ARGUMENT, "max_new_tokens: expected 0 (the package's) or more, got " +
                                                   std::to_string(p.max_new_tokens) + "; fix: pass a token count >= 0");
  }
  mvgpt::AnswerOptions options;
  options.max_new_tokens = p.max_new_tokens;
  if (p.temperature > 0) options.temperature = p.temperature;
  if (p.top_p >= 0) options.top_p = p.top_p;
  if (p.top_k >= 0) options.top_k = p.top_k;
  if (p.repetition_penalty > 0) options.repetition_penalty = p.repetition_penalty;
  if (p.use_seed) options.seed = p.seed;
  return options;
}

std::function<bool(const std::string&)> text_callback(mvgpt_text_callback on_text, void* user_data) {
  if (on_text == nullptr) return nullptr;
  return [on_text, user_data](const std::string& text) { return on_text(text.c_str(), text.size(), user_data) == 0; };
}

nlohmann::ordered_json optional_number(const std::optional<double>& value) {
  return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json();
}

std::string dump(const nlohmann::ordered_json& record) {
  return record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

mvgpt_status new_encoding(mvgpt_model* model, std::unique_ptr<mvgpt::Encoding> impl, mvgpt_encoding** out) {
  auto encoding = std::make_unique<mvgpt_encoding>();
  encoding->impl = std::move(impl);
  encoding->hidden = static_cast<size_t>(model->impl.model().manifest().hidden_size);
  encoding->owner = model;
  *out = encoding.release();
  return MVGPT_OK;
}

}  // namespace

extern "C" {

const char* mvgpt_last_error(void) { return last_error.c_str(); }  // ("" after a success)

const char* mvgpt_version(void) { return "0.1.0"; }

int mvgpt_schema_version(void) { return mvgpt::kSchemaVersion; }

mvgpt_status mvgpt_tokenizer_load(const char* path, mvgpt_tokenizer** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (path == nullptr) null_argument("path");
    *out = new mvgpt_tokenizer(path);
    return MVGPT_OK;
  });
}

void mvgpt_tokenizer_free(mvgpt_tokenizer* tokenizer) { delete tokenizer; }

mvgpt_status mvgpt_tokenizer_encode(const mvgpt_tokenizer* tokenizer, const char* text, size_t length,
                                    int32_t* ids, size_t capacity, size_t* count) {
  return guarded([&] {
    if (tokenizer == nullptr) null_argument("tokenizer");
    if (text == nullptr && length > 0) null_argument("text");
    if (count == nullptr) null_argument("count");
    if (ids == nullptr && capacity > 0) null_argument("ids");
    const auto encoded = tokenizer->impl.encode(std::string_view(text == nullptr ? "" : text, length));
    *count = encoded.size();
    if (encoded.size() > capacity) {
      return fail(MVGPT_BUFFER_TOO_SMALL, "ids: expected room for " + std::to_string(encoded.size()) +
                                              " ids, got " + std::to_string(capacity) +
                                              "; fix: call again with *count ids of room");
    }
    if (!encoded.empty()) std::memcpy(ids, encoded.data(), encoded.size() * sizeof(int32_t));
    return MVGPT_OK;
  });
}

mvgpt_status mvgpt_tokenizer_decode(const mvgpt_tokenizer* tokenizer, const int32_t* ids, size_t count,
                                    int skip_special_tokens, char* text, size_t capacity, size_t* length) {
  return guarded([&] {
    if (tokenizer == nullptr) null_argument("tokenizer");
    if (ids == nullptr && count > 0) null_argument("ids");
    if (length == nullptr) null_argument("length");
    if (text == nullptr && capacity > 0) null_argument("text");
    const std::string decoded = tokenizer->impl.decode(ids, count, skip_special_tokens != 0);
    *length = decoded.size();
    if (decoded.size() > capacity) {
      return fail(MVGPT_BUFFER_TOO_SMALL, "text: expected room for " + std::to_string(decoded.size()) +
                                              " bytes, got " + std::to_string(capacity) +
                                              "; fix: call again with *length bytes of room");
    }
    if (!decoded.empty()) std::memcpy(text, decoded.data(), decoded.size());
    return MVGPT_OK;
  });
}

int32_t mvgpt_tokenizer_token_id(const mvgpt_tokenizer* tokenizer, const char* token) {
  if (tokenizer == nullptr || token == nullptr) return -1;
  int32_t id = -1;
  guarded([&] {
    id = tokenizer->impl.token_id(token);
    return MVGPT_OK;
  });
  return id;
}

size_t mvgpt_tokenizer_vocab_size(const mvgpt_tokenizer* tokenizer) {
  return tokenizer == nullptr ? 0 : tokenizer->impl.vocab_size();
}

mvgpt_model_params mvgpt_model_default_params(void) { return mvgpt_model_params{0, nullptr, nullptr}; }

mvgpt_status mvgpt_model_load(const char* package, const mvgpt_model_params* params, mvgpt_model** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (package == nullptr) null_argument("package");
    const mvgpt_model_params p = params != nullptr ? *params : mvgpt_model_default_params();
    if (p.threads < 0) {
      return fail(MVGPT_INVALID_ARGUMENT, "threads: expected 0 (the default) or more, got " + std::to_string(p.threads) +
                                              "; fix: pass a thread count >= 0");
    }
    mvgpt::ModelOptions options;
    options.threads = p.threads;
    options.ops_library = p.ops_library != nullptr ? p.ops_library : "";
    options.provider = p.provider != nullptr && *p.provider != '\0' ? p.provider : "cpu";
    *out = new mvgpt_model(package, options);
    return MVGPT_OK;
  });
}

void mvgpt_model_free(mvgpt_model* model) { delete model; }

int mvgpt_model_custom_ops(const mvgpt_model* model) { return model != nullptr && model->impl.model().custom_ops() ? 1 : 0; }

const char* mvgpt_model_notes(const mvgpt_model* model) { return model == nullptr ? "" : model->notes.c_str(); }

mvgpt_status mvgpt_encode_frames(mvgpt_model* model, const uint8_t* rgb, int num_frames, int height, int width,
                                 mvgpt_encoding** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (model == nullptr) null_argument("model");
    if (rgb == nullptr) null_argument("rgb");
    if (num_frames < 1 || height < 1 || width < 1 || static_cast<int64_t>(height) * width > (int64_t{1} << 26)) {
      return fail(MVGPT_INVALID_ARGUMENT, "frames: expected (num_frames >= 1, height >= 1, width >= 1, 3) uint8 RGB of at most 2^26 pixels "
                                          "a frame, got (" + std::to_string(num_frames) + ", " + std::to_string(height) + ", " +
                                              std::to_string(width) + ", 3); fix: pass decoded RGB frames");
    }
    return new_encoding(model, model->impl.encode_frames(rgb, num_frames, height, width), out);
  });
}

mvgpt_status mvgpt_encode_video(mvgpt_model* model, const char* path, mvgpt_encoding** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (model == nullptr) null_argument("model");
    if (path == nullptr) null_argument("path");
    return new_encoding(model, model->impl.encode_video(path), out);
  });
}

int mvgpt_video_files_supported(void) { return mvgpt::video_files_supported() ? 1 : 0; }

void mvgpt_encoding_free(mvgpt_encoding* encoding) { delete encoding; }

const float* mvgpt_encoding_visual(const mvgpt_encoding* encoding, size_t* rows, size_t* cols) {
  if (encoding == nullptr || !encoding->impl || rows == nullptr || cols == nullptr) return nullptr;
  *cols = encoding->hidden;
  *rows = encoding->hidden == 0 ? 0 : encoding->impl->visual.size() / encoding->hidden;
  return encoding->impl->visual.data();
}

size_t mvgpt_encoding_frames(const mvgpt_encoding* encoding, const int32_t** sampled, const int32_t** selected,
                             size_t* selected_count) {
  if (encoding == nullptr || !encoding->impl) return 0;
  if (sampled != nullptr) *sampled = encoding->impl->frame_indices.data();
  if (selected != nullptr) *selected = encoding->impl->selected_frames.data();
  if (selected_count != nullptr) *selected_count = encoding->impl->selected_frames.size();
  return encoding->impl->frame_indices.size();
}

mvgpt_answer_params mvgpt_answer_default_params(void) { return mvgpt_answer_params{0, 0.0, -1.0, -1, 0.0, 0, 0}; }

mvgpt_status mvgpt_answer_question(mvgpt_model* model, mvgpt_encoding* encoding, const char* question,
                                   const mvgpt_answer_params* params, mvgpt_text_callback on_text, void* user_data,
                                   mvgpt_answer** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (model == nullptr) null_argument("model");
    if (encoding == nullptr || !encoding->impl) null_argument("encoding");
    if (question == nullptr) null_argument("question");
    if (encoding->owner != model) {
      return fail(MVGPT_INVALID_ARGUMENT, "encoding: expected one that this model made (mvgpt_encode_frames), got another "
                                          "model's; fix: encode the video with the model that answers");
    }
    const mvgpt::AnswerOptions options = answer_options(params);
    const auto callback = text_callback(on_text, user_data);
    auto answer = std::make_unique<mvgpt_answer>();
    answer->impl = model->impl.answer(*encoding->impl, question, options, callback);
    const mvgpt::Encoding& e = *encoding->impl;
    nlohmann::ordered_json seconds = nlohmann::ordered_json::object();
    for (const char* stage : {"decode_video", "clip_vision", "frame_scorer", "video_mamba", "projectors"}) {
      const auto found = e.seconds.find(stage);
      seconds[stage] = !encoding->answered && found != e.seconds.end() ? found->second : 0.0;
    }
    double encode_seconds = 0;
    for (const auto& [k, v] : e.seconds) encode_seconds += v;
    for (const auto& [k, v] : answer->impl.seconds) seconds[k] = v;
    const mvgpt::Answer& a = answer->impl;
    nlohmann::ordered_json record = {
        {"answer", a.text},
        {"token_ids", a.token_ids},
        {"frame_indices", e.frame_indices},
        {"selected_frames", e.selected_frames},
        {"seconds", seconds},
        {"ttft_s", a.ttft_s + (encoding->answered ? 0.0 : encode_seconds)},
        {"decode_tokens_per_s", optional_number(a.decode_tokens_per_s)},
        {"encoding_reused", a.encoding_reused},
        {"custom_ops", model->impl.model().custom_ops()},
    };
    answer->json = dump(record);
    encoding->answered = true;
    *out = answer.release();
    return MVGPT_OK;
  });
}

const char* mvgpt_answer_text(const mvgpt_answer* answer) { return answer == nullptr ? "" : answer->impl.text.c_str(); }

size_t mvgpt_answer_token_ids(const mvgpt_answer* answer, const int32_t** ids) {
  if (ids != nullptr) *ids = answer == nullptr ? nullptr : answer->impl.token_ids.data();
  return answer == nullptr ? 0 : answer->impl.token_ids.size();
}

const char* mvgpt_answer_json(const mvgpt_answer* answer) { return answer == nullptr ? "" : answer->json.c_str(); }

void mvgpt_answer_free(mvgpt_answer* answer) { delete answer; }

mvgpt_stream_params mvgpt_stream_default_params(void) { return mvgpt_stream_params{0.0, 2.0, 1.0, 1, 8}; }

mvgpt_status mvgpt_stream_open(mvgpt_model* model, const mvgpt_stream_params* params, mvgpt_stream** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (model == nullptr) null_argument("model");
    const mvgpt_stream_params p = params != nullptr ? *params : mvgpt_stream_default_params();
    mvgpt::StreamOptions options;
    options.window_s = p.window_s;
    options.refresh_s = p.refresh_s < 0 ? 2.0 : p.refresh_s;
    options.target_fps = p.target_fps <= 0 ? 1.0 : p.target_fps;
    options.background = p.background != 0;
    options.max_pending = p.max_pending <= 0 ? 8 : p.max_pending;
    if (std::isnan(p.window_s) || std::isnan(p.refresh_s) || std::isnan(p.target_fps)) {
      return fail(MVGPT_INVALID_ARGUMENT, "stream params: expected numbers, got NaN; fix: start from mvgpt_stream_default_params()");
    }
    auto stream = std::make_unique<mvgpt_stream>();
    stream->model = model;
    stream->impl = std::make_unique<mvgpt::Stream>(model->impl, options);
    *out = stream.release();
    return MVGPT_OK;
  });
}

void mvgpt_stream_free(mvgpt_stream* stream) { delete stream; }

mvgpt_status mvgpt_stream_push(mvgpt_stream* stream, const uint8_t* rgb, int height, int width, double timestamp, int* kept) {
  return guarded([&] {
    if (kept != nullptr) *kept = 0;
    if (stream == nullptr) null_argument("stream");
    if (rgb == nullptr) null_argument("rgb");
    if (height < 1 || width < 1 || static_cast<int64_t>(height) * width > (int64_t{1} << 26)) {
      return fail(MVGPT_INVALID_ARGUMENT, "stream frame: expected (height >= 1, width >= 1, 3) uint8 RGB of at most 2^26 pixels, got (" +
                                              std::to_string(height) + ", " + std::to_string(width) + ", 3); fix: push decoded RGB frames");
    }
    const bool was_kept = stream->impl->push(rgb, height, width, timestamp);
    if (kept != nullptr) *kept = was_kept ? 1 : 0;
    return MVGPT_OK;
  });
}

mvgpt_status mvgpt_stream_wait_idle(mvgpt_stream* stream, double timeout_s, int* idle) {
  return guarded([&] {
    if (idle != nullptr) *idle = 0;
    if (stream == nullptr) null_argument("stream");
    if (!(timeout_s >= 0)) {
      return fail(MVGPT_INVALID_ARGUMENT, "timeout_s: expected seconds >= 0, got " + std::to_string(timeout_s) + "; fix: pass e.g. 60");
    }
    const bool done = stream->impl->wait_idle(timeout_s);
    if (idle != nullptr) *idle = done ? 1 : 0;
    return MVGPT_OK;
  });
}

mvgpt_status mvgpt_stream_answer(mvgpt_stream* stream, const char* question, int fresh, const mvgpt_answer_params* params,
                                 mvgpt_text_callback on_text, void* user_data, mvgpt_answer** out) {
  return guarded([&] {
    if (out == nullptr) null_argument("out");
    *out = nullptr;
    if (stream == nullptr) null_argument("stream");
    if (question == nullptr) null_argument("question");
    const mvgpt::AnswerOptions options = answer_options(params);
    mvgpt::StreamAnswer live = stream->impl->answer(question, fresh != 0, options, text_callback(on_text, user_data));
    const mvgpt::Stream::Counts counts = stream->impl->counts();
    const mvgpt::StreamPrefix& prefix = *live.prefix;
    const mvgpt::Encoding& e = *prefix.encoding;
    auto answer = std::make_unique<mvgpt_answer>();
    answer->impl = std::move(live.answer);
    const mvgpt::Answer& a = answer->impl;
    nlohmann::ordered_json seconds = nlohmann::ordered_json::object();
    for (const char* stage : {"decode_video", "clip_vision", "frame_scorer", "video_mamba", "projectors"}) seconds[stage] = 0.0;
    for (const auto& [k, v] : a.seconds) seconds[k] = v;
    nlohmann::ordered_json record = {
        {"answer", a.text},
        {"token_ids", a.token_ids},
        {"window", {prefix.timestamps.front(), prefix.timestamps.back()}},
        {"frame_timestamps", prefix.timestamps},
        {"frame_indices", e.frame_indices},
        {"selected_frames", e.selected_frames},
        {"prefix_age_s", live.prefix_age_s},
        {"prefix_seconds", prefix.seconds},
        {"seconds", seconds},
        {"ttft_s", a.ttft_s},
        {"decode_tokens_per_s", optional_number(a.decode_tokens_per_s)},
        {"frames", counts.frames},
        {"kept", counts.kept},
        {"dropped", counts.dropped},
        {"custom_ops", stream->model->impl.model().custom_ops()},
    };
    answer->json = dump(record);
    *out = answer.release();
    return MVGPT_OK;
  });
}

}  // extern "C"
