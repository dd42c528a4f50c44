// Pixel preprocessing, as runtime/preprocess.py does it (bit for bit on the uint8 resize):
// - CLIP: Pillow's 8-bit BICUBIC (22-bit fixed-point coefficients, horizontal pass then vertical
//   pass, each rounded and clipped to uint8), shortest side to `size` and a centre crop, or a
//   squash to size x size; then /255 and mean/std in float32, as transformers does;
// - VideoMamba: OpenCV's INTER_LINEAR resize (its bit-exact 8-bit fixed point) to size x size,
//   then (x / 255 - mean) / std in float64, cast to float32.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace mvgpt {

// One (height, width, 3) uint8 RGB frame, row-major.
struct FrameView {
  const uint8_t* data;
  int height, width;
};

// Pillow's resize(BICUBIC) of `frame` to width x height; only the output pixels inside `crop`
// (top, left, crop height, crop width) are computed. Returns (crop height, crop width, 3).
std::vector<uint8_t> resize_bicubic_pil(const FrameView& frame, int width, int height, std::array<int, 4> crop);

// cv2.resize(frame, (width, height), interpolation=INTER_LINEAR). Returns (height, width, 3).
std::vector<uint8_t> resize_linear_cv(const FrameView& frame, int width, int height);

// (height, width) after resizing the shortest side to `size` (transformers' rounding).
std::array<int, 2> clip_resize_shape(int height, int width, int size);

// Appends one frame's CLIP pixel values, (3, size, size) float32, to `out`.
void preprocess_clip(const FrameView& frame, int size, bool center_crop, const std::array<double, 3>& mean,
                     const std::array<double, 3>& std, std::vector<float>& out);

// Appends one frame's VideoMamba pixel values, (3, size, size) float32, to `out`.
void preprocess_video_mamba(const FrameView& frame, int size, const std::array<double, 3>& mean,
                            const std::array<double, 3>& std, std::vector<float>& out);

}  // namespace mvgpt
