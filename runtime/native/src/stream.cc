#include "stream.h"

#include <chrono>
#include <cmath>

#include "status.h"

namespace mvgpt {
namespace {

constexpr int kPrefixStep = 128;  // prefix positions per background decoder run (stream.py PREFILL_STEP)

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Stream::Stream(Pipeline& pipeline, const StreamOptions& options)
    : pipeline_(pipeline),
      num_frames_(pipeline.model().manifest().num_frames),
      refresh_s_(options.refresh_s),
      background_(options.background),
      max_pending_(std::max(1, options.max_pending)) {
  if (!(std::isfinite(options.target_fps) && options.target_fps > 0)) {
    throw Error(MVGPT_INVALID_ARGUMENT, "stream: expected a positive target_fps, got " + std::to_string(options.target_fps) +
                                            "; fix: pass e.g. 1.0");
  }
  period_ = 1.0 / options.target_fps;
  window_s_ = options.window_s > 0 ? options.window_s : num_frames_ * period_;
  if (!(std::isfinite(window_s_) && window_s_ >= period_)) {
    throw Error(MVGPT_INVALID_ARGUMENT, "stream window: expected at least " + std::to_string(period_) +
                                            " s (one sampled frame), got " + std::to_string(options.window_s) +
                                            "; fix: pass a longer window_s");
  }
  if (!(std::isfinite(refresh_s_) && refresh_s_ >= 0)) {
    throw Error(MVGPT_INVALID_ARGUMENT, "stream refresh: expected seconds >= 0, got " + std::to_string(refresh_s_) +
                                            "; fix: pass e.g. 2.0");
  }
  pipeline_.prefix_ids();  // (checks the prompt template now, not at the first refresh)
  if (background_) worker_ = std::thread([this] { work(); });
}

Stream::~Stream() {
  closed_ = true;
  {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    wake_ = true;
  }
  wake_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

Stream::Counts Stream::counts() const {
  std::lock_guard<std::mutex> lock(state_);
  return Counts{pushed_, kept_, dropped_};
}

// ------------------------------------------------------------------ frames in

bool Stream::push(const uint8_t* rgb, int height, int width, double timestamp) {
  rethrow_worker_error();
  if (rgb == nullptr || height < 1 || width < 1) {
    throw Error(MVGPT_INVALID_ARGUMENT, "stream frame: expected a non-empty (height, width, 3) uint8 RGB frame, got " +
                                            std::to_string(height) + "x" + std::to_string(width) + "; fix: push decoded RGB frames");
  }
  int64_t index = 0;
  {
    std::lock_guard<std::mutex> lock(state_);
    if (!std::isfinite(timestamp) || (have_last_ && timestamp <= last_timestamp_)) {
      throw Error(MVGPT_INVALID_ARGUMENT, "stream timestamp: expected a finite time after " +
                                              (have_last_ ? std::to_string(last_timestamp_) : std::string("None")) + ", got " +
                                              std::to_string(timestamp) + "; fix: push frames in order with increasing timestamps");
    }
    index = pushed_++;
    if (!have_last_) next_tick_ = timestamp;
    have_last_ = true;
    last_timestamp_ = timestamp;
    if (timestamp < next_tick_ - 1e-6) return false;
    while (next_tick_ <= timestamp + 1e-6) next_tick_ += period_;  // the tick this frame takes, then the next
    ++kept_;
    if (background_) {
      if (static_cast<int>(pending_.size()) >= max_pending_) {
        pending_.pop_front();
        ++dropped_;
      }
      const size_t bytes = static_cast<size_t>(height) * width * 3;
      pending_.push_back(Pending{index, timestamp, std::vector<uint8_t>(rgb, rgb + bytes), height, width});
    }
  }
  if (background_) {
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      wake_ = true;
    }
    wake_cv_.notify_all();
  } else {
    encode_frame(index, timestamp, FrameView{rgb, height, width});
  }
  return true;
}

void Stream::encode_frame(int64_t index, double timestamp, const FrameView& frame) {
  // (beside a question: onnxruntime sessions take concurrent runs)
  std::vector<float> clip, mamba;
  pipeline_.preprocess(frame, clip, mamba);
  std::vector<int64_t> shape;
  std::vector<float> features = pipeline_.clip_features(clip, 1, &shape);
  auto kept = std::make_shared<const Kept>(Kept{index, timestamp, std::move(features), std::move(mamba)});
  std::lock_guard<std::mutex> lock(state_);
  patches_ = shape[1];
  channels_ = shape[2];
  window_.push_back(std::move(kept));
  while (!window_.empty() && window_.front()->timestamp < timestamp - window_s_ + 1e-6) window_.pop_front();
}

// ------------------------------------------------------------------ prefix

std::shared_ptr<StreamPrefix> Stream::refresh() {
  std::vector<std::shared_ptr<const Kept>> window;
  int64_t patches = 0, channels = 0;
  {
    std::lock_guard<std::mutex> lock(state_);
    window.assign(window_.begin(), window_.end());
    patches = patches_;
    channels = channels_;
  }
  if (window.empty()) return nullptr;
  auto prefix = std::make_shared<StreamPrefix>();
  prefix->made_at = now();
  std::vector<int32_t> positions = sample_positions(static_cast<int>(window.size()), 1.0, num_frames_, 1.0);
  std::vector<float> features, mamba;
  std::vector<int32_t> indices;
  for (int32_t p : positions) {
    const Kept& k = *window[static_cast<size_t>(p)];
    features.insert(features.end(), k.features.begin(), k.features.end());
    mamba.insert(mamba.end(), k.mamba.begin(), k.mamba.end());
    indices.push_back(static_cast<int32_t>(k.index));
    prefix->timestamps.push_back(k.timestamp);
  }
  const std::vector<int64_t> shape = {static_cast<int64_t>(positions.size()), patches, channels};
  prefix->encoding = pipeline_.encode_features(features, shape, mamba, std::move(indices), {});
  const double t0 = now();
  pipeline_.prefill_prefix(*prefix->encoding, kPrefixStep, [&](const std::function<void()>& run) {
    compute_acquire(false);
    try {
      run();
    } catch (...) {
      compute_release();
      throw;
    }
    compute_release();
    encode_pending();  // frames that arrived meanwhile do not wait for the refresh
  });
  prefix->seconds = prefix->encoding->seconds;
  prefix->seconds["prefix_prefill"] = now() - t0;
  prefix->newest_index = window.back()->index;
  std::lock_guard<std::mutex> lock(state_);
  prefix_ = prefix;
  return prefix;
}

bool Stream::stale() const {
  std::lock_guard<std::mutex> lock(state_);
  return !window_.empty() && (!prefix_ || prefix_->newest_index != window_.back()->index);
}

// ------------------------------------------------------------------ background

void Stream::work() {
  try {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return wake_ || closed_.load(); });
        wake_ = false;
      }
      if (closed_) return;
      encode_pending();
      if (closed_) return;
      const double t = now();
      if (stale() && t - last_refresh_start_ >= refresh_s_) {
        last_refresh_start_ = t;
        refresh();
      }
    }
  } catch (...) {  // surfaced to the caller's next push or answer
    std::lock_guard<std::mutex> lock(state_);
    error_ = std::current_exception();
  }
}

void Stream::encode_pending() {
  if (!background_ || std::this_thread::get_id() != worker_.get_id()) return;
  while (!closed_) {
    Pending job;
    {
      std::lock_guard<std::mutex> lock(state_);
      if (pending_.empty()) return;
      job = std::move(pending_.front());
      pending_.pop_front();
    }
    encode_frame(job.index, job.timestamp, FrameView{job.rgb.data(), job.height, job.width});
  }
}

void Stream::rethrow_worker_error() {
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(state_);
    error = std::exchange(error_, nullptr);
  }
  if (!error) return;
  try {
    std::rethrow_exception(error);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(MVGPT_INTERNAL, std::string("stream worker failed: ") + e.what() + "; fix: check the frames and the package");
  }
}

bool Stream::wait_for(const std::function<bool()>& done, double timeout_s) {
  const double deadline = now() + timeout_s;
  while (true) {
    rethrow_worker_error();
    if (done()) return true;
    if (now() >= deadline) return false;
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      wake_ = true;
    }
    wake_cv_.notify_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool Stream::wait_idle(double timeout_s) {
  if (!background_) return true;
  return wait_for(
      [&] {
        bool empty = false;
        {
          std::lock_guard<std::mutex> lock(state_);
          empty = pending_.empty();
        }
        return empty && !stale();
      },
      timeout_s);
}

void Stream::compute_acquire(bool question) {
  std::unique_lock<std::mutex> lock(compute_mutex_);
  if (question) ++questions_;
  compute_cv_.wait(lock, [&] { return !busy_ && (question || questions_ == 0); });
  busy_ = true;
  if (question) --questions_;
}

void Stream::compute_release() {
  {
    std::lock_guard<std::mutex> lock(compute_mutex_);
    busy_ = false;
  }
  compute_cv_.notify_all();
}

// ------------------------------------------------------------------ questions

StreamAnswer Stream::answer(const std::string& question, bool fresh, const AnswerOptions& options,
                            const std::function<bool(const std::string&)>& on_text) {
  const double start = now();
  rethrow_worker_error();
  pipeline_.prompt_ids(question);  // checks the question before any heavy work
  std::shared_ptr<StreamPrefix> prefix;
  {
    std::lock_guard<std::mutex> lock(state_);
    prefix = prefix_;
  }
  if (background_ && !prefix && !fresh) {  // the background's first prefix, once it exists
    const bool ready = wait_for(
        [&] {
          std::lock_guard<std::mutex> lock(state_);
          return prefix_ || (window_.empty() && pending_.empty());
        },
        300.0);
    if (!ready) throw Error(MVGPT_INTERNAL, "stream: no prefix after 300 s; fix: check the frames pushed");
    std::lock_guard<std::mutex> lock(state_);
    prefix = prefix_;
  } else if (fresh || !background_) {
    if (background_) {  // the frames kept so far, encoded
      wait_for(
          [&] {
            std::lock_guard<std::mutex> lock(state_);
            return pending_.empty();
          },
          300.0);
    }
    if (!prefix || stale()) prefix = refresh();
  }
  if (!prefix) throw Error(MVGPT_INVALID_ARGUMENT, "stream: no frame has been kept yet; fix: push frames before asking");
  StreamAnswer out;
  compute_acquire(true);
  const double waited = now() - start;  // (the answer's time to first token counts from the question)
  try {
    out.answer = pipeline_.answer(*prefix->encoding, question, options, on_text);
  } catch (...) {
    compute_release();
    throw;
  }
  compute_release();
  out.answer.ttft_s += waited;
  out.prefix = prefix;
  out.prefix_age_s = start - prefix->made_at;
  return out;
}

}  // namespace mvgpt
