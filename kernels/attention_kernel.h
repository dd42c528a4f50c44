// The one-position (decode) attention's math without onnxruntime, shared by the op
// (attention.cc, which adds input checks and runs the items on onnxruntime's thread pool) and the
// check program (check/kernel_check.cc, one thread): the arguments, attention_impl.h compiled once
// per instruction set (simd.h), the choice of path, and the split of long caches into ranges -
// independent items, each a partial softmax - with the merge of the ranges into the output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu.h"

namespace mvgpt {
namespace attn {

struct AttnArgs {
  int64_t batch, num_heads, kv_heads, head_dim, past_len, present_len;
  int64_t q_stride, kv_stride;  // floats from one batch row of query (key, value) to the next
  float scale;
  const float *query, *key, *value, *past_key, *past_value, *cos, *sin;
  const int32_t* seqlens_k;
  float *output, *present_key, *present_value;
};

#define MVGPT_SIMD_IMPL "attention_impl.h"
#include "simd.h"  // namespaces scalar, neon | avx2, avx512: V + attend_part
#undef MVGPT_SIMD_IMPL

struct Path {
  Isa isa;
  void (*attend)(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*, float*);
  int64_t (*scratch)(const AttnArgs&, int64_t);
};

// The widest instruction set up to `cap` that this CPU has and whose width divides head_dim
// (the kernel loads whole vectors of a row).
inline Path path(Isa cap, int64_t head_dim) {
  switch (widest_dividing(cap, head_dim)) {
#if MVGPT_X86
    case kAvx2:
      return {kAvx2, avx2::attend_part, avx2::scratch_floats};
    case kAvx512:
      return {kAvx512, avx512::attend_part, avx512::scratch_floats};
#endif
#if MVGPT_ARM
    case kNeon:
      return {kNeon, neon::attend_part, neon::scratch_floats};
#endif
    default:
      return {kScalar, scalar::attend_part, scalar::scratch_floats};
  }
}

// Cached positions per range: a (batch row, kv head) whose cache is longer is split into up to
// kMaxRanges ranges run in parallel and merged, so that more threads than kv heads have work.
constexpr int64_t kMinRangeKeys = 512;
constexpr int64_t kMaxRanges = 16;

// How a call is cut: items = batch * kv_heads * ranges, each writing part_floats floats of parts
// (r = num_heads / kv_heads blocks of hd unnormalized outputs, max score, sum of 2^(s - max)).
struct Plan {
  Path path;
  int64_t ranges, part_floats, scratch_floats, items;
};

// `longest`: positions in use of the longest batch row (max seqlens_k + 1).
inline Plan plan(const AttnArgs& a, const Path& p, int64_t longest) {
  const int64_t ranges = std::max<int64_t>(1, std::min(kMaxRanges, longest / kMinRangeKeys));
  const int64_t part = (a.num_heads / a.kv_heads) * (a.head_dim + 2);
  return {p, ranges, part, p.scratch(a, (longest + ranges - 1) / ranges),
          a.batch * a.kv_heads * ranges};
}

// Item `item` of pl.items: one range of one (batch row, kv head) into its part of `parts`
// (pl.items * pl.part_floats floats), in this thread's scratch.
inline void run_item(const AttnArgs& a, const Plan& pl, int64_t item, float* parts) {
  const int64_t range = item % pl.ranges, bg = item / pl.ranges;
  const int64_t b = bg / a.kv_heads, g = bg % a.kv_heads;
  const int64_t T = a.seqlens_k[b] + 1, span = (T + pl.ranges - 1) / pl.ranges;
  const int64_t t0 = std::min(T, range * span), t1 = std::min(T, t0 + span);
  float* part = parts + item * pl.part_floats;
  if (t0 == t1) {  // a short row: nothing in this range
    for (int64_t h = 0; h < pl.part_floats; h += a.head_dim + 2) {
      part[h + a.head_dim] = -INFINITY;
      part[h + a.head_dim + 1] = 0.0f;
    }
    return;
  }
  pl.path.attend(a, b, g, t0, t1, thread_scratch(pl.scratch_floats), part);
}

// The ranges into a.output: out = sum_i 2^(m_i - M) o_i / sum_i 2^(m_i - M) l_i, M = max_i m_i.
inline void merge(const AttnArgs& a, const Plan& pl, const float* parts) {
  const int64_t hd = a.head_dim, r = a.num_heads / a.kv_heads;
  for (int64_t bg = 0; bg < a.batch * a.kv_heads; ++bg) {
    const int64_t b = bg / a.kv_heads, g = bg % a.kv_heads;
    for (int64_t j = 0; j < r; ++j) {
      const float* first = parts + (bg * pl.ranges * r + j) * (hd + 2);
      float m = -INFINITY;
      for (int64_t i = 0; i < pl.ranges; ++i) m = std::max(m, first[i * pl.part_floats + hd]);
      float* out = a.output + (b * a.num_heads + g * r + j) * hd;
      std::fill(out, out + hd, 0.0f);
      float total = 0.0f;
      for (int64_t i = 0; i < pl.ranges; ++i) {
        const float* p = first + i * pl.part_floats;
        if (p[hd + 1] == 0.0f) continue;
        const float w = std::exp2(p[hd] - m);
        total += w * p[hd + 1];
        for (int64_t d = 0; d < hd; ++d) out[d] += w * p[d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
    }
  }
}

}  // namespace attn
}  // namespace mvgpt
