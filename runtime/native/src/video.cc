#include "video.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <system_error>

#include "pipeline.h"
#include "status.h"

#ifdef MVGPT_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#endif

namespace mvgpt {
namespace {

constexpr int kSeekMinGap = 64;  // runtime/video.py SEEK_MIN_GAP

std::string quoted(const std::string& path) { return "'" + path + "'"; }

// runtime/video.py check_file: a path that cannot be a video fails before any decoding
void check_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    throw Error(MVGPT_NOT_FOUND, "video not found: expected an existing file, got " + quoted(path) + "; fix: check the path");
  }
  if (fs::is_directory(st)) {
    throw Error(MVGPT_INVALID_ARGUMENT, "video path is a folder: expected a video file, got the folder " + quoted(path) +
                                            "; fix: name a file inside it");
  }
  if (fs::file_size(path, ec) == 0 && !ec) {
    throw Error(MVGPT_BAD_FORMAT, "video file is empty: expected a video, got 0 bytes in " + quoted(path) +
                                      "; fix: re-copy or re-record the file");
  }
}

#ifdef MVGPT_WITH_OPENCV

cv::VideoCapture open(const std::string& path) {
  cv::VideoCapture capture;
  try {
    capture.open(path, cv::CAP_FFMPEG);
  } catch (const cv::Exception&) {
  }
  if (!capture.isOpened()) {
    throw Error(MVGPT_BAD_FORMAT, "cannot open " + quoted(path) + ": expected a video file OpenCV/FFmpeg can read, got an "
                                  "unreadable, truncated or non-video file; fix: check the file plays, or re-encode it");
  }
  capture.set(cv::CAP_PROP_ORIENTATION_AUTO, 0);  // (upright() turns the frames)
  return capture;
}

// How a frame is turned upright, from the container's rotation tag as the Python runtime's
// OpenCV applies it (CAP_PROP_ORIENTATION_AUTO: 90 clockwise, 180, 90 counter-clockwise); -1:
// as stored. OpenCV 4.6.0 reports the tag with its sign inverted (and turns the frames the wrong
// way: OpenCV issue 22088, fixed in 4.7), so its value is mirrored here.
int upright(const cv::VideoCapture& capture) {
  int angle = static_cast<int>(std::lround(capture.get(cv::CAP_PROP_ORIENTATION_META))) % 360;
  if (angle < 0) angle += 360;
#if CV_VERSION_MAJOR == 4 && CV_VERSION_MINOR == 6
  angle = (360 - angle) % 360;
#endif
  switch (angle) {
    case 90: return cv::ROTATE_90_CLOCKWISE;
    case 180: return cv::ROTATE_180;
    case 270: return cv::ROTATE_90_COUNTERCLOCKWISE;
    default: return -1;
  }
}

int count_frames(const std::string& path) {  // a full grab() pass: decodes, converts nothing
  cv::VideoCapture capture = open(path);
  int count = 0;
  while (capture.grab()) ++count;
  if (count == 0) {
    throw Error(MVGPT_BAD_FORMAT, "no decodable frames in " + quoted(path) + ": expected at least 1 video frame, got 0; "
                                  "fix: check the file has a video stream, or re-encode it");
  }
  return count;
}

// BGR frames at the unique positions, or none when the stream ends early or a seek misses
std::optional<std::map<int, cv::Mat>> decode(cv::VideoCapture& capture, std::vector<int32_t> positions, bool seek) {
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  std::map<int, cv::Mat> frames;
  int current = 0;  // the frame the next grab() returns
  for (int target : positions) {
    if (seek && target - current >= kSeekMinGap) {
      capture.set(cv::CAP_PROP_POS_FRAMES, target);
      if (static_cast<int>(capture.get(cv::CAP_PROP_POS_FRAMES)) != target) return std::nullopt;
      current = target;
    }
    for (; current < target; ++current) {
      if (!capture.grab()) return std::nullopt;
    }
    cv::Mat frame;
    if (!capture.grab() || !capture.retrieve(frame) || frame.empty()) return std::nullopt;
    frames[target] = frame.clone();
    ++current;
  }
  return frames;
}

#endif

}  // namespace

#ifdef MVGPT_WITH_OPENCV

bool video_files_supported() { return true; }

VideoFrames read_video(const std::string& path, int num_frames, double target_fps) {
  check_file(path);
  double fps = 0;
  int count = 0;
  std::vector<int32_t> positions;
  std::optional<std::map<int, cv::Mat>> frames;
  int rotation = -1;
  {
    cv::VideoCapture capture = open(path);
    rotation = upright(capture);
    fps = capture.get(cv::CAP_PROP_FPS);
    const double reported = capture.get(cv::CAP_PROP_FRAME_COUNT);
    count = std::isfinite(reported) && reported > 0 && reported < 2e9 ? static_cast<int>(reported) : 0;
    if (count == 0) {
      capture.release();
      count = count_frames(path);
      capture = open(path);
    }
    positions = sample_positions(count, fps, num_frames, target_fps);  // (padded to num_frames)
    frames = decode(capture, positions, true);
  }
  if (!frames) {  // the stream ended early (an overstated length) or a seek missed
    const int real = count_frames(path);
    positions = sample_positions(real, fps, num_frames, target_fps);
    cv::VideoCapture capture = open(path);
    frames = decode(capture, positions, false);
    if (!frames) {
      throw Error(MVGPT_BAD_FORMAT, "cannot decode " + quoted(path) + ": expected frames 0.." + std::to_string(real - 1) +
                                        " to decode twice the same way, got a shorter second pass; fix: re-encode the "
                                        "video (e.g. to H.264 mp4)");
    }
  }
  const cv::Mat& first = frames->at(positions.front());
  const bool turned = rotation == cv::ROTATE_90_CLOCKWISE || rotation == cv::ROTATE_90_COUNTERCLOCKWISE;
  VideoFrames out;
  out.height = turned ? first.cols : first.rows;
  out.width = turned ? first.rows : first.cols;
  const size_t bytes = static_cast<size_t>(out.height) * out.width * 3;
  out.rgb.resize(bytes * positions.size());
  cv::Mat stored;
  for (size_t i = 0; i < positions.size(); ++i) {
    const cv::Mat& frame = frames->at(positions[i]);
    if (frame.rows != first.rows || frame.cols != first.cols || frame.type() != CV_8UC3) {
      throw Error(MVGPT_BAD_FORMAT, "inconsistent frames in " + quoted(path) + ": expected one (H, W, 3) size for all "
                                    "frames; fix: re-encode the video at a fixed resolution");
    }
    cv::Mat rgb(out.height, out.width, CV_8UC3, out.rgb.data() + i * bytes);
    if (rotation < 0) {
      cv::cvtColor(frame, rgb, cv::COLOR_BGR2RGB);
    } else {
      cv::rotate(frame, stored, rotation);
      cv::cvtColor(stored, rgb, cv::COLOR_BGR2RGB);
    }
  }
  out.positions = std::move(positions);
  return out;
}

#else

bool video_files_supported() { return false; }

VideoFrames read_video(const std::string& path, int, double) {
  check_file(path);
  throw Error(MVGPT_UNSUPPORTED, "video files: this libmvgpt was built without OpenCV, got " + quoted(path) +
                                     "; fix: install OpenCV's C++ API (Debian/Ubuntu: apt-get install libopencv-videoio-dev) "
                                     "and rebuild, or decode the video yourself and pass RGB frames (mvgpt_encode_frames)");
}

#endif

}  // namespace mvgpt
