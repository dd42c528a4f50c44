// SelectiveScan's math without onnxruntime, shared by the op (selective_scan.cc, which adds
// input checks and threads) and the check program (check/kernel_check.cc, one thread): the
// arguments, selective_scan_impl.h compiled once per instruction set (simd.h), the table of those
// paths, and the two steps of every run - B and C made time-major, then independent work items
// of (batch row, block of one vector's channels).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu.h"
#include "scan_args.h"

namespace mvgpt {
namespace scan {

constexpr int64_t kChunk = 64;  // time steps per tile: the block's tiles stay in L1

#define MVGPT_SIMD_IMPL "selective_scan_impl.h"
#include "simd.h"  // namespaces scalar, neon | avx2, avx512: V + scan_block
#undef MVGPT_SIMD_IMPL

// One instruction set's kernel: block(a, b, c0, bt, ct, scratch) scans batch row b, channels
// [c0, c0 + lanes) with B and C of that row time-major, in scratch(state) floats of scratch.
struct Path {
  Isa isa;
  int lanes;
  void (*block)(const ScanArgs&, int64_t, int64_t, const float*, const float*, float*);
  int64_t (*scratch)(int64_t);
};

// The kernel of `isa`; scalar's for a set this build does not hold (parse_isa admits none).
inline Path path(Isa isa) {
  switch (isa) {
#if MVGPT_X86
    case kAvx2:
      return {kAvx2, avx2::kLanes, avx2::scan_block, avx2::scratch_floats};
    case kAvx512:
      return {kAvx512, avx512::kLanes, avx512::scan_block, avx512::scratch_floats};
#endif
#if MVGPT_ARM
    case kNeon:
      return {kNeon, neon::kLanes, neon::scan_block, neon::scratch_floats};
#endif
    default:
      return {kScalar, scalar::kLanes, scalar::scan_block, scalar::scratch_floats};
  }
}

// B and C, each (batch, state, length), as (batch, length, state): one contiguous row of state
// values per step. The first half is B's, the second C's.
inline std::vector<float> time_major_bc(const ScanArgs& a) {
  const int64_t L = a.length, N = a.state;
  std::vector<float> bc(static_cast<size_t>(2 * a.batch * L * N));
  float* bt = bc.data();
  float* ct = bt + a.batch * L * N;
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      const float* bs = a.B + (b * N + n) * L;
      const float* cs = a.C + (b * N + n) * L;
      for (int64_t t = 0; t < L; ++t) {
        bt[(b * L + t) * N + n] = bs[t];
        ct[(b * L + t) * N + n] = cs[t];
      }
    }
  }
  return bc;
}

// Work items: one per (batch row, block of p.lanes channels), independent of each other.
inline int64_t item_count(const ScanArgs& a, const Path& p) {
  return a.batch * ((a.dim + p.lanes - 1) / p.lanes);
}

// Item `item` of item_count(a, p); bc from time_major_bc(a), scratch: p.scratch(a.state) floats.
inline void run_item(const ScanArgs& a, const Path& p, const float* bc, int64_t item,
                     float* scratch) {
  const int64_t blocks = (a.dim + p.lanes - 1) / p.lanes, LN = a.length * a.state;
  const int64_t b = item / blocks, c0 = (item % blocks) * p.lanes;
  p.block(a, b, c0, bc + b * LN, bc + (a.batch + b) * LN, scratch);
}

}  // namespace scan
}  // namespace mvgpt
