// mvgpt.hpp: a thin C++17 layer over the C API (mvgpt.h): owning handles, std::string and
// std::vector in and out, and mvgpt::Exception (status + message) for a failed call. Nothing
// here is compiled into the library; the C API stays the boundary.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mvgpt.h"

namespace mvgpt {

class Exception : public std::runtime_error {
 public:
  Exception(mvgpt_status status, const char* message) : std::runtime_error(message), status_(status) {}
  mvgpt_status status() const { return status_; }

 private:
  mvgpt_status status_;
};

inline void check(mvgpt_status status) {
  if (status != MVGPT_OK) throw Exception(status, mvgpt_last_error());
}

template <typename T, void (*Free)(T*)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T* p) : p_(p) {}
  Handle(Handle&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Handle& operator=(Handle&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { Free(p_); }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

class Answer {
 public:
  explicit Answer(mvgpt_answer* a) : h_(a) {}
  std::string text() const { return mvgpt_answer_text(h_.get()); }
  std::vector<int32_t> token_ids() const {
    const int32_t* ids = nullptr;
    const size_t n = mvgpt_answer_token_ids(h_.get(), &ids);
    return std::vector<int32_t>(ids, ids + n);
  }
  std::string json() const { return mvgpt_answer_json(h_.get()); }

 private:
  Handle<mvgpt_answer, mvgpt_answer_free> h_;
};

class Encoding {
 public:
  explicit Encoding(mvgpt_encoding* e) : h_(e) {}
  mvgpt_encoding* get() const { return h_.get(); }

 private:
  Handle<mvgpt_encoding, mvgpt_encoding_free> h_;
};

class Model {
 public:
  explicit Model(const std::string& package, mvgpt_model_params params = mvgpt_model_default_params()) {
    mvgpt_model* m = nullptr;
    check(mvgpt_model_load(package.c_str(), &params, &m));
    h_ = Handle<mvgpt_model, mvgpt_model_free>(m);
  }
  // frames: (num_frames, height, width, 3) uint8 RGB
  Encoding encode(const uint8_t* rgb, int num_frames, int height, int width) {
    mvgpt_encoding* e = nullptr;
    check(mvgpt_encode_frames(h_.get(), rgb, num_frames, height, width, &e));
    return Encoding(e);
  }
  // a video file (mvgpt_encode_video: needs a libmvgpt built with OpenCV)
  Encoding encode_video(const std::string& path) {
    mvgpt_encoding* e = nullptr;
    check(mvgpt_encode_video(h_.get(), path.c_str(), &e));
    return Encoding(e);
  }
  // on_text hears each piece of text; return false to stop. An exception it throws stops the
  // answer and is rethrown here (it does not cross the C library).
  Answer answer(const Encoding& encoding, const std::string& question,
                mvgpt_answer_params params = mvgpt_answer_default_params(),
                std::function<bool(const std::string&)> on_text = nullptr) {
    return detail_answer(on_text, [&](mvgpt_text_callback cb, void* user, mvgpt_answer** a) {
      return mvgpt_answer_question(h_.get(), encoding.get(), question.c_str(), &params, cb, user, a);
    });
  }
  bool custom_ops() const { return mvgpt_model_custom_ops(h_.get()) != 0; }
  std::string notes() const { return mvgpt_model_notes(h_.get()); }
  mvgpt_model* get() const { return h_.get(); }

  // (the callback's exception, if any, rethrown after the C call)
  template <typename Call>
  static Answer detail_answer(std::function<bool(const std::string&)>& on_text, Call&& call) {
    struct State {
      std::function<bool(const std::string&)>* on_text;
      std::exception_ptr error;
    } state{&on_text, nullptr};
    auto forward = [](const char* text, size_t length, void* user) -> int {
      auto* s = static_cast<State*>(user);
      try {
        return (*s->on_text)(std::string(text, length)) ? 0 : 1;
      } catch (...) {
        s->error = std::current_exception();
        return 1;
      }
    };
    mvgpt_answer* a = nullptr;
    const mvgpt_status status = call(on_text ? +forward : nullptr, &state, &a);
    if (state.error) {
      mvgpt_answer_free(a);
      std::rethrow_exception(state.error);
    }
    check(status);
    return Answer(a);
  }

 private:
  Handle<mvgpt_model, mvgpt_model_free> h_;
};

// Live video (mvgpt_stream_*): push frames as they arrive, ask about the last seconds. Destroy the
// stream before its model.
class Stream {
 public:
  explicit Stream(Model& model, mvgpt_stream_params params = mvgpt_stream_default_params()) {
    mvgpt_stream* s = nullptr;
    check(mvgpt_stream_open(model.get(), &params, &s));
    h_ = Handle<mvgpt_stream, mvgpt_stream_free>(s);
  }
  // one (height, width, 3) RGB frame at `timestamp` seconds; true when it is kept
  bool push(const uint8_t* rgb, int height, int width, double timestamp) {
    int kept = 0;
    check(mvgpt_stream_push(h_.get(), rgb, height, width, timestamp, &kept));
    return kept != 0;
  }
  bool wait_idle(double timeout_s = 60.0) {
    int idle = 0;
    check(mvgpt_stream_wait_idle(h_.get(), timeout_s, &idle));
    return idle != 0;
  }
  Answer answer(const std::string& question, bool fresh = false,
                mvgpt_answer_params params = mvgpt_answer_default_params(),
                std::function<bool(const std::string&)> on_text = nullptr) {
    return Model::detail_answer(on_text, [&](mvgpt_text_callback cb, void* user, mvgpt_answer** a) {
      return mvgpt_stream_answer(h_.get(), question.c_str(), fresh ? 1 : 0, &params, cb, user, a);
    });
  }

 private:
  Handle<mvgpt_stream, mvgpt_stream_free> h_;
};

}  // namespace mvgpt
