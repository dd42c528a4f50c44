// Live video, as runtime/stream.py's StreamSession: frames pushed as they arrive with their
// timestamps; the model's 1-frame-per-second rule applied on a grid of stream time (a frame is
// kept when it is the first at or after the next tick); each kept frame preprocessed and through
// clip_vision once, when it arrives, and held while it is in the window (the last window_s
// seconds); the window's kept frames sampled as an array of frames is (sample_positions, then
// padded), so an answer equals one about those frames. The decoder's [prompt prefix, visual]
// cache of the window is refreshed (in the background: every refresh_s seconds, in runs of 128
// positions under one lock that questions take first), so a question pays for its own tokens.
// background = false runs everything in the caller's calls (push encodes, answer refreshes).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pipeline.h"

namespace mvgpt {

struct StreamOptions {
  double window_s = 0;      // <= 0: num_frames / target_fps
  double refresh_s = 2.0;   // the background's refresh period (at the earliest when the last is done)
  double target_fps = 1.0;  // kept frames per second
  bool background = true;
  int max_pending = 8;      // kept frames waiting for clip_vision; beyond, the oldest is dropped
};

struct StreamPrefix {  // the decoder's [prompt prefix, visual] cache of one window
  std::shared_ptr<Encoding> encoding;  // (its kept KV cache filled)
  std::vector<double> timestamps;      // of the sampled frames
  int64_t newest_index = -1;           // the newest kept frame in the window
  double made_at = 0;                  // when the window was taken (steady clock seconds)
  std::map<std::string, double> seconds;  // the vision stages after clip_vision, and prefix_prefill
};

struct StreamAnswer {
  Answer answer;
  std::shared_ptr<const StreamPrefix> prefix;
  double prefix_age_s = 0;
};

class Stream {
 public:
  Stream(Pipeline& pipeline, const StreamOptions& options);
  ~Stream();  // stops the background thread
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // One (height, width, 3) RGB frame at `timestamp` seconds (increasing); true when it is kept.
  bool push(const uint8_t* rgb, int height, int width, double timestamp);
  // Until every kept frame is encoded and the prefix covers the window (background); false on timeout.
  bool wait_idle(double timeout_s);
  // About the window of the latest prefix (fresh: of the window as it is now).
  StreamAnswer answer(const std::string& question, bool fresh, const AnswerOptions& options,
                      const std::function<bool(const std::string&)>& on_text);

  struct Counts {
    int64_t frames, kept, dropped;  // pushed; kept by the sampling rule; kept, then dropped
  };
  Counts counts() const;

 private:
  struct Kept {
    int64_t index;
    double timestamp;
    std::vector<float> features;  // (patches, channels) CLIP features
    std::vector<float> mamba;     // (3, S, S) VideoMamba pixels
  };
  struct Pending {
    int64_t index;
    double timestamp;
    std::vector<uint8_t> rgb;
    int height, width;
  };
  void encode_frame(int64_t index, double timestamp, const FrameView& frame);
  std::shared_ptr<StreamPrefix> refresh();
  bool stale() const;
  void work();
  void encode_pending();
  void rethrow_worker_error();
  bool wait_for(const std::function<bool()>& done, double timeout_s);
  void compute_acquire(bool question);
  void compute_release();

  Pipeline& pipeline_;
  int num_frames_;
  double period_, window_s_, refresh_s_;
  bool background_;
  int max_pending_;
  int64_t patches_ = 0, channels_ = 0;

  std::mutex compute_mutex_;  // one lock for decoder work; questions go first
  std::condition_variable compute_cv_;
  bool busy_ = false;
  int questions_ = 0;

  mutable std::mutex state_;  // guards the fields below
  std::deque<std::shared_ptr<const Kept>> window_;
  std::deque<Pending> pending_;
  std::shared_ptr<StreamPrefix> prefix_;
  int64_t pushed_ = 0, kept_ = 0, dropped_ = 0;
  bool have_last_ = false;
  double last_timestamp_ = 0, next_tick_ = 0;
  std::exception_ptr error_;

  std::mutex wake_mutex_;
  std::condition_variable wake_cv_;
  bool wake_ = false;
  std::atomic<bool> closed_{false};
  double last_refresh_start_ = -1e300;
  std::thread worker_;
};

}  // namespace mvgpt
