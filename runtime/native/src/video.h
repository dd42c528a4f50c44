// Video files, as runtime/video.py reads them: OpenCV's FFmpeg backend with the rotation tag
// honoured, the reference's frame sampling (sample_positions, then pad_positions), short gaps
// skipped with grab(), long ones (SEEK_MIN_GAP frames) by seeking, and a container that overstates
// its length detected and decoded again frame by frame. Built only with OpenCV's C++ API
// (MVGPT_WITH_OPENCV); without it read_video fails with MVGPT_UNSUPPORTED and says how to get it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mvgpt {

struct VideoFrames {
  std::vector<uint8_t> rgb;         // (positions, height, width, 3) RGB, upright
  int height = 0, width = 0;
  std::vector<int32_t> positions;   // the source frame index of each frame (repeats when padded)
};

bool video_files_supported();

// The sampled frames of the video file at `path` (num_frames of them).
VideoFrames read_video(const std::string& path, int num_frames, double target_fps);

}  // namespace mvgpt
