#include "preprocess.h"

#include "status.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mvgpt {
namespace {

constexpr int kPrecisionBits = 22;  // Pillow's fixed point for 8-bit images: 32 - 8 - 2
constexpr double kSupport = 2.0;    // bicubic

double bicubic(double x) {  // Keys, a = -0.5 (Pillow's BICUBIC)
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// numpy's sum of a contiguous float64 row (pairwise: 8 partial sums per block of up to 128), so
// that the coefficients' normalization rounds exactly as runtime/preprocess.py's does
double numpy_sum(const double* a, size_t n) {
  if (n < 8) {
    double r = 0.0;
    for (size_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

// One output pixel's input range and fixed-point coefficients.
struct Taps {
  int first = 0;
  std::vector<int64_t> weights;
};

std::vector<Taps> bicubic_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = kSupport * filter_scale;
  const int taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  std::vector<Taps> out(static_cast<size_t>(out_size));
  std::vector<double> w(static_cast<size_t>(taps));
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    // Pillow truncates (center -/+ support + 0.5) toward zero
    const int first = std::max(static_cast<int>(static_cast<int64_t>(center - support + 0.5)), 0);
    const int last = std::min(static_cast<int>(static_cast<int64_t>(center + support + 0.5)), in_size);
    for (int k = 0; k < taps; ++k) {
      const int at = first + k;
      w[k] = at < last ? bicubic((at - center + 0.5) / filter_scale) : 0.0;
    }
    const double total = numpy_sum(w.data(), w.size());
    Taps& t = out[o];
    t.first = first;
    for (int k = 0; k < last - first; ++k) {
      double v = total != 0.0 ? w[k] / total : 0.0;
      v *= static_cast<double>(1 << kPrecisionBits);
      t.weights.push_back(static_cast<int64_t>(v < 0 ? std::trunc(v - 0.5) : std::trunc(v + 0.5)));
    }
  }
  return out;
}

uint8_t fixed_to_u8(int64_t acc) {
  const int64_t v = (acc + (int64_t{1} << (kPrecisionBits - 1))) >> kPrecisionBits;  // floor
  return static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
}

}  // namespace

// (The sum of a numpy float64 row in runtime/preprocess.py is exact: every term and partial sum is
// an integer below 2^53, so integer accumulation here gives the same values.)
std::vector<uint8_t> resize_bicubic_pil(const FrameView& frame, int width, int height, std::array<int, 4> crop) {
  const auto [top, left, crop_h, crop_w] = crop;
  const int in_h = frame.height, in_w = frame.width;
  // horizontal pass: (in_h, crop_w, 3)
  std::vector<uint8_t> mid(static_cast<size_t>(in_h) * crop_w * 3);
  if (width != in_w) {
    const std::vector<Taps> taps = bicubic_taps(in_w, width);
    for (int y = 0; y < in_h; ++y) {
      const uint8_t* row = frame.data + static_cast<size_t>(y) * in_w * 3;
      for (int x = 0; x < crop_w; ++x) {
        const Taps& t = taps[left + x];
        for (int c = 0; c < 3; ++c) {
          int64_t acc = 0;
          for (size_t k = 0; k < t.weights.size(); ++k) acc += t.weights[k] * row[(t.first + k) * 3 + c];
          mid[(static_cast<size_t>(y) * crop_w + x) * 3 + c] = fixed_to_u8(acc);
        }
      }
    }
  } else {
    for (int y = 0; y < in_h; ++y) {
      std::copy_n(frame.data + (static_cast<size_t>(y) * in_w + left) * 3, static_cast<size_t>(crop_w) * 3,
                  mid.data() + static_cast<size_t>(y) * crop_w * 3);
    }
  }
  std::vector<uint8_t> out(static_cast<size_t>(crop_h) * crop_w * 3);
  if (height != in_h) {
    const std::vector<Taps> taps = bicubic_taps(in_h, height);
    for (int y = 0; y < crop_h; ++y) {
      const Taps& t = taps[top + y];
      for (int x = 0; x < crop_w; ++x) {
        for (int c = 0; c < 3; ++c) {
          int64_t acc = 0;
          for (size_t k = 0; k < t.weights.size(); ++k) {
            acc += t.weights[k] * mid[((t.first + k) * static_cast<size_t>(crop_w) + x) * 3 + c];
          }
          out[(static_cast<size_t>(y) * crop_w + x) * 3 + c] = fixed_to_u8(acc);
        }
      }
    }
  } else {
    std::copy_n(mid.data() + static_cast<size_t>(top) * crop_w * 3, out.size(), out.data());
  }
  return out;
}

namespace {

// One axis of OpenCV's INTER_LINEAR on 8-bit images (its generic 11-bit fixed-point path, which
// cv2.resize takes for uint8 INTER_LINEAR; not INTER_LINEAR_EXACT): per output index the two
// source indices and coefficients. The source coordinate is computed in double and rounded to
// float before the coefficients are, as OpenCV does; the x axis resets the coefficient at the
// borders, the y axis only clamps the rows.
struct LinearAxis {
  std::vector<int> i0, i1;
  std::vector<int32_t> c0, c1;
};

LinearAxis linear_axis(int src, int dst, bool reset_at_borders) {
  const double scale = 1.0 / (static_cast<double>(dst) / static_cast<double>(src));
  LinearAxis a;
  for (int d = 0; d < dst; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    if (reset_at_borders) {
      if (s < 0) s = 0, f = 0.0f;
      if (s >= src - 1) s = src - 1, f = 0.0f;
    }
    a.c0.push_back(static_cast<int32_t>(std::nearbyint((1.0f - f) * 2048.0f)));
    a.c1.push_back(static_cast<int32_t>(std::nearbyint(f * 2048.0f)));
    a.i0.push_back(std::clamp(s, 0, src - 1));
    a.i1.push_back(std::clamp(s + 1, 0, src - 1));
  }
  return a;
}

}  // namespace

std::vector<uint8_t> resize_linear_cv(const FrameView& frame, int width, int height) {
  const int src_h = frame.height, src_w = frame.width;
  std::vector<uint8_t> out(static_cast<size_t>(height) * width * 3);
  const auto px = [&](int y, int x, int c) -> int32_t { return frame.data[(static_cast<size_t>(y) * src_w + x) * 3 + c]; };
  if (src_w == width && src_h == height) {
    std::copy_n(frame.data, out.size(), out.data());
    return out;
  }
  const double scale_x = 1.0 / (static_cast<double>(width) / src_w), scale_y = 1.0 / (static_cast<double>(height) / src_h);
  const double eps = std::numeric_limits<double>::epsilon();
  if (std::fabs(scale_x - 2.0) < eps && std::fabs(scale_y - 2.0) < eps) {  // OpenCV takes INTER_AREA here
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < 3; ++c) {
          const int32_t sum = px(2 * y, 2 * x, c) + px(2 * y, 2 * x + 1, c) + px(2 * y + 1, 2 * x, c) + px(2 * y + 1, 2 * x + 1, c);
          out[(static_cast<size_t>(y) * width + x) * 3 + c] = static_cast<uint8_t>((sum + 2) >> 2);
        }
      }
    }
    return out;
  }
  const LinearAxis ax = linear_axis(src_w, width, true), ay = linear_axis(src_h, height, false);
  std::vector<int32_t> h0(static_cast<size_t>(width) * 3), h1(h0.size());
  const auto horizontal = [&](int y, std::vector<int32_t>& h) {  // exact; then >> 4 (fits 16 bits)
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        h[static_cast<size_t>(x) * 3 + c] = (px(y, ax.i0[x], c) * ax.c0[x] + px(y, ax.i1[x], c) * ax.c1[x]) >> 4;
      }
    }
  };
  for (int y = 0; y < height; ++y) {
    horizontal(ay.i0[y], h0);
    horizontal(ay.i1[y], h1);
    for (size_t i = 0; i < h0.size(); ++i) {
      const int32_t v = ((ay.c0[y] * h0[i]) >> 16) + ((ay.c1[y] * h1[i]) >> 16);
      out[static_cast<size_t>(y) * width * 3 + i] = static_cast<uint8_t>(std::clamp((v + 2) >> 2, 0, 255));
    }
  }
  return out;
}

std::array<int, 2> clip_resize_shape(int height, int width, int size) {
  const bool portrait = width <= height;
  const int shortest = portrait ? width : height, longest = portrait ? height : width;
  const double new_long_exact = static_cast<double>(size) * longest / shortest;
  if (!(new_long_exact < (1 << 20))) {
    throw Error(MVGPT_INVALID_ARGUMENT, "frames: expected an aspect ratio that resizes to at most 2^20 pixels on the long side, got " +
                                            std::to_string(height) + "x" + std::to_string(width) + "; fix: crop the frames");
  }
  const int new_long = static_cast<int>(new_long_exact);
  return portrait ? std::array<int, 2>{new_long, size} : std::array<int, 2>{size, new_long};
}

void preprocess_clip(const FrameView& frame, int size, bool center_crop, const std::array<double, 3>& mean,
                     const std::array<double, 3>& std, std::vector<float>& out) {
  std::vector<uint8_t> pixels;
  if (center_crop) {
    const auto [new_h, new_w] = clip_resize_shape(frame.height, frame.width, size);
    pixels = resize_bicubic_pil(frame, new_w, new_h, {(new_h - size) / 2, (new_w - size) / 2, size, size});
  } else {
    pixels = resize_bicubic_pil(frame, size, size, {0, 0, size, size});
  }
  const size_t plane = static_cast<size_t>(size) * size, start = out.size();
  out.resize(start + 3 * plane);
  for (int c = 0; c < 3; ++c) {
    const float m = static_cast<float>(mean[c]), s = static_cast<float>(std[c]);
    for (size_t i = 0; i < plane; ++i) {
      float x = static_cast<float>(static_cast<double>(pixels[i * 3 + c]) * (1.0 / 255));
      x -= m;
      x /= s;
      out[start + c * plane + i] = x;
    }
  }
}

void preprocess_video_mamba(const FrameView& frame, int size, const std::array<double, 3>& mean,
                            const std::array<double, 3>& std, std::vector<float>& out) {
  const std::vector<uint8_t> pixels = resize_linear_cv(frame, size, size);
  const size_t plane = static_cast<size_t>(size) * size, start = out.size();
  out.resize(start + 3 * plane);
  for (int c = 0; c < 3; ++c) {
    for (size_t i = 0; i < plane; ++i) {
      out[start + c * plane + i] = static_cast<float>((static_cast<double>(pixels[i * 3 + c]) / 255.0 - mean[c]) / std[c]);
    }
  }
}

}  // namespace mvgpt
