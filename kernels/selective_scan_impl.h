// The SelectiveScan compute kernel, written once over a SIMD vector type `V` (W float lanes).
//
// This file is included by selective_scan.cc once per instruction set, inside a namespace that
// defines `V` (scalar, AVX2 or AVX-512) and under the matching `#pragma GCC target`, so it must
// not include anything itself. Vectors run across channels: one lane per channel of a block of W
// channels, so the sum over the state index n is a plain vector FMA and the state h[n] of every
// lane stays in registers; B_t[n] and C_t[n] are shared by all channels and are broadcast.
// (AVX2, 16 registers, runs N = 8 or 16 with lanes across the state instead: "state lanes".)
//
// Per block and per chunk of kChunk time steps:
//   1. transpose delta and u rows of W channels into time-major tiles (t, lane);
//   2. dt = softplus(delta + delta_bias), dtu = dt * u;
//   3. recurrence h[n] = 2^(dt * A[n] * log2 e) * h[n] + dtu * B_t[n];  y_t = sum_n C_t[n] h[n];
//   4. y = (y + D * u) * silu(z) (z transposed like u), transpose back into the channel rows.

constexpr int kLanes = V::W;

// 2^x for the state decay; exp(x) = 2^(x log2 e).
inline V vexp(V x) { return V::exp2(V::mul(x, V::set1(kLog2e))); }

// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) <= 1, log1p(e) = e P(e) (kLog1p, relative
// error 2e-7: accurate for tiny e, no 1 + e rounding; x for x > 20 like torch).
constexpr float kLog1p[9] = {1.0f, -0.49999865889549255f, 0.3332783877849579f,
                             -0.2491355836391449f, 0.1937987208366394f, -0.14237193763256073f,
                             0.08487555384635925f, -0.033511463552713394f, 0.006212139502167702f};
// softplus(x) from x and e = exp(-|x|): max(x, 0) + e P(e).
template <typename U>
inline U softplus_of(U x, U e) {
  U p = U::fma(U::set1(kLog1p[8]), e, U::set1(kLog1p[7]));
  for (int j = 6; j >= 0; --j) p = U::fma(p, e, U::set1(kLog1p[j]));
  return U::fma(e, p, U::max(x, U::zero()));
}
inline V vsoftplus(V x) {
  return softplus_of(x, vexp(V::sub(V::zero(), V::max(x, V::sub(V::zero(), x)))));
}

// silu(z) = z / (1 + exp(-z)).
inline V vsilu(V z) {
  return V::div(z, V::add(V::set1(1.0f), vexp(V::sub(V::zero(), z))));
}

// dst[t * W + c] = rows[c][t0 + t] for t < count, c < valid (other lanes: 0).
inline void load_tile(const float* const* rows, int64_t t0, int64_t count, int valid, float* dst) {
  int64_t t = 0;
  if (valid == kLanes) {
    for (; t + kLanes <= count; t += kLanes) V::transpose(rows, t0 + t, dst + t * kLanes);
  }
  for (; t < count; ++t) {
    for (int c = 0; c < kLanes; ++c) dst[t * kLanes + c] = c < valid ? rows[c][t0 + t] : 0.0f;
  }
}

// rows[c][t0 + t] = src[t * W + c] for t < count, c < valid.
inline void store_tile(const float* src, int64_t t0, int64_t count, int valid, float* const* rows) {
  int64_t t = 0;
  if (valid == kLanes) {
    for (; t + kLanes <= count; t += kLanes) V::transpose_out(src + t * kLanes, rows, t0 + t);
  }
  for (; t < count; ++t) {
    for (int c = 0; c < valid; ++c) rows[c][t0 + t] = src[t * kLanes + c];
  }
}

// Rows of W channels that a later chunk reads (delta, u, z) and writes (y), asked for during
// this chunk's recurrence, one line of one row per step: W rows x kChunk / 16 lines per list. The
// tile transposes read 16 rows at once, more streams than the hardware prefetchers follow: on
// Zen 5 their loads were ~30% of the AVX-512 op. Asked for all at once before the recurrence the
// lines did little (more misses than a core keeps in flight); spread over it, for the next chunk,
// the op took 10-15% less, for the chunk after next 6% less again (3 chunks ahead: less).
struct RowPrefetch {
  static constexpr int kMax = 8;
  explicit RowPrefetch(int64_t row_stride) : stride(row_stride) {}
  int64_t stride;           // floats from one row (channel) to the next
  const float* base[kMax];  // row 0 at the list's first step; row c at base + c * stride
  int rows[kMax];           // rows (channels) in the list
  int64_t count[kMax];      // steps
  int n = 0;
  void add(const float* b, int r, int64_t cnt) {
    if (cnt > 0 && r > 0 && n < kMax) {
      base[n] = b, rows[n] = r, count[n] = cnt;
      ++n;
    }
  }
  // step t of the chunk: line t / W of row t % W of every list
  void at(int64_t t) const {
    const int64_t c = t % kLanes, i = (t / kLanes) * kLineFloats;
    for (int k = 0; k < n; ++k) {
      if (c < rows[k] && i < count[k]) prefetch(base[k] + c * stride + i);
    }
  }
};

// The recurrence over `count` steps of one chunk. NS > 0: the state size is a compile-time
// constant and h lives in registers; NS == 0: any state size, h in the `h` scratch. pf: rows to
// prefetch meanwhile.
template <int NS>
inline void recur(int64_t count, int64_t state, const float* dt_t, const float* dtu_t,
                  const float* b_t, const float* c_t, const float* a2, float* h, float* y_t,
                  const RowPrefetch& pf) {
  const int64_t n_state = NS > 0 ? NS : state;
  if constexpr (NS > 0) {
    V hr[NS];
    for (int n = 0; n < NS; ++n) hr[n] = V::load(h + n * kLanes);
    for (int64_t t = 0; t < count; ++t) {
      pf.at(t);
      const V dt = V::load(dt_t + t * kLanes);
      const V dtu = V::load(dtu_t + t * kLanes);
      const float* bt = b_t + t * n_state;
      const float* ct = c_t + t * n_state;
      V y0 = V::zero(), y1 = V::zero();
#pragma GCC unroll 16
      for (int n = 0; n < NS; n += 2) {
        V da0 = V::exp2(V::mul(dt, V::load(a2 + n * kLanes)));
        V da1 = V::exp2(V::mul(dt, V::load(a2 + (n + 1) * kLanes)));
        hr[n] = V::fma(da0, hr[n], V::mul(dtu, V::set1(bt[n])));
        hr[n + 1] = V::fma(da1, hr[n + 1], V::mul(dtu, V::set1(bt[n + 1])));
        y0 = V::fma(hr[n], V::set1(ct[n]), y0);
        y1 = V::fma(hr[n + 1], V::set1(ct[n + 1]), y1);
      }
      V::add(y0, y1).store(y_t + t * kLanes);
    }
    for (int n = 0; n < NS; ++n) hr[n].store(h + n * kLanes);
  } else {
    for (int64_t t = 0; t < count; ++t) {
      pf.at(t);
      const V dt = V::load(dt_t + t * kLanes);
      const V dtu = V::load(dtu_t + t * kLanes);
      const float* bt = b_t + t * n_state;
      const float* ct = c_t + t * n_state;
      V y = V::zero();
      for (int64_t n = 0; n < n_state; ++n) {
        V da = V::exp2(V::mul(dt, V::load(a2 + n * kLanes)));
        V hn = V::fma(da, V::load(h + n * kLanes), V::mul(dtu, V::set1(bt[n])));
        hn.store(h + n * kLanes);
        y = V::fma(hn, V::set1(ct[n]), y);
      }
      y.store(y_t + t * kLanes);
    }
  }
}

// ---------------------------------------------------------------- state lanes
// An instruction set with 16 registers (AVX2) cannot keep h[16] of W channels in registers beside
// the exp2 temporaries: the channel-lane recurrence above spills (AVX2 at VideoMamba-M: 13.1 ms
// against 5.3 ms for AVX-512). Where V declares kRegisters < 32 and N is W or 2 W, lanes run
// across the state instead: one channel at a time, its h[N] in N / W registers, dt and dt * u
// broadcast per step, and the products C_t[n] h[n] of W steps summed into W outputs by V::sums.
// u, delta, z and y are read and written along their rows: no transposes. Needs V::sums,
// V::exp2_nonpos, V::min, V::abs and V::select_neg besides the common operations.

template <typename T, typename = int>
struct FewRegisters {
  static constexpr bool value = false;
};
template <typename T>
struct FewRegisters<T, decltype(static_cast<void>(T::kRegisters), 0)> {
  static constexpr bool value = T::kRegisters < 32;
};

constexpr int64_t kLaneChunk = 128;  // steps per chunk (64: 5% slower, 256: 4%)
constexpr int kGroup = 4;            // vectors of steps whose softplus exponentials interleave
constexpr int64_t kGroupSteps = kGroup * kLanes;

// n <= W floats at p as a vector (lanes n..W-1: 0; n <= 0: all 0), and its first n lanes to p
inline V load_part(const float* p, int64_t n) {
  if (n >= kLanes) return V::load(p);
  if (n <= 0) return V::zero();
  float tmp[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
  return V::load(tmp);
}
inline void store_part(V v, float* p, int64_t n) {
  if (n >= kLanes) return v.store(p);
  if (n <= 0) return;
  float tmp[kLanes];
  v.store(tmp);
  for (int64_t i = 0; i < n; ++i) p[i] = tmp[i];
}

// e^-|x| for kGroup vectors into e: |x| clamped at 87 (NaN reads as 87), so that
// -|x| log2 e >= -125.6 and exp2_nonpos needs no clamp of its own: the multiply then fuses with
// its range reduction (5 operations before the table lookup where max(x, -x) and a clamp in
// between took 7).
template <typename U>
inline void exp_neg_abs(const U* x, U* e) {
  for (int i = 0; i < kGroup; ++i) {
    e[i] = U::mul(U::min(U::abs(x[i]), U::set1(87.0f)), U::set1(-kLog2e));
  }
  U::template exp2_nonpos<kGroup, false>(e);
}

// vsoftplus for kGroup vectors in place, the exponentials interleaved and from exp_neg_abs.
template <typename U>
inline void softplus_group(U* x) {
  U e[kGroup];
  exp_neg_abs(x, e);
  for (int i = 0; i < kGroup; ++i) x[i] = softplus_of(x[i], e[i]);
}

// How a chunk computes its decay 2^(dt A log2 e): any inputs (U::exp2); dt >= 0 and A <= 0
// (U::exp2_nonpos, clamped below); and, as well, dt |A| log2 e <= 126 (no clamp at all).
enum Decay { kAny, kNonPos, kInRange };

template <typename U, int kDecay>
inline U decay(U x) {
  if constexpr (kDecay == kAny) {
    return U::exp2(x);
  } else {
    U::template exp2_nonpos<1, kDecay == kNonPos>(&x);
    return x;
  }
}

// The recurrence of one channel over `count` steps, NS = N / W vectors of state. a2: A * log2(e)
// of the channel (N); h: its state (N); y: count outputs C_t . h_t. The W steps of a block are
// unrolled: as a loop, its exit branch cost up to 30% depending on where the code landed.
template <typename U, int NS, int kDecay>
inline void recur_lanes(int64_t count, const float* dt, const float* dtu, const float* b_t,
                        const float* c_t, const float* a2, float* h, float* y) {
  constexpr int64_t N = NS * kLanes;
  U hr[NS], ar[NS];
  for (int s = 0; s < NS; ++s) {
    hr[s] = U::load(h + s * kLanes);
    ar[s] = U::load(a2 + s * kLanes);
  }
  auto step = [&](int64_t t) {  // h_t from h_{t-1}; returns the W products C_t[n] h_t[n]
    const U d = U::set1(dt[t]), du = U::set1(dtu[t]);
    const float* bt = b_t + t * N;
    const float* ct = c_t + t * N;
    U yv = U::zero();
    for (int s = 0; s < NS; ++s) {
      const U da = decay<U, kDecay>(U::mul(d, ar[s]));
      hr[s] = U::fma(da, hr[s], U::mul(du, U::load(bt + s * kLanes)));
      yv = s == 0 ? U::mul(hr[s], U::load(ct)) : U::fma(hr[s], U::load(ct + s * kLanes), yv);
    }
    return yv;
  };
  int64_t t = 0;
  for (; t + kLanes <= count; t += kLanes) {
    U s[kLanes / 2];  // each pair of steps' products folded at once: fewer live registers
#pragma GCC unroll 16
    for (int k = 0; k < kLanes; k += 2) {
      const U first = step(t + k);
      s[k / 2] = U::sum_pair(first, step(t + k + 1));
    }
    U::sums_of_pairs(s).store(y + t);
  }
  if (t < count) {
    U p[kLanes];
    for (int k = 0; k < kLanes; ++k) p[k] = t + k < count ? step(t + k) : U::zero();
    store_part(U::sums(p), y + t, count - t);
  }
  for (int s = 0; s < NS; ++s) hr[s].store(h + s * kLanes);
}

template <typename U, int NS>
inline void recur_lanes(int decay, int64_t count, const float* dt, const float* dtu,
                        const float* b_t, const float* c_t, const float* a2, float* h, float* y) {
  if (decay == kInRange) return recur_lanes<U, NS, kInRange>(count, dt, dtu, b_t, c_t, a2, h, y);
  if (decay == kNonPos) return recur_lanes<U, NS, kNonPos>(count, dt, dtu, b_t, c_t, a2, h, y);
  recur_lanes<U, NS, kAny>(count, dt, dtu, b_t, c_t, a2, h, y);
}

// One group of kGroupSteps steps at t of a channel's chunk (n of them valid, all when kFull):
// dt (softplus applied) and dt * u into dt, dtu; the max of dt (and, without softplus, of -dt)
// into hi, lo.
template <typename U, bool kFull, bool kSoftplus>
inline void prep_group(const ScanArgs& a, int64_t row, int64_t t, int64_t n, U bias, float* dt,
                       float* dtu, U& hi, U& lo) {
  U v[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    const float* d = a.delta + row + t + i * kLanes;
    v[i] = U::add(kFull ? U::load(d) : load_part(d, n - i * kLanes), bias);
  }
  if constexpr (kSoftplus) softplus_group<U>(v);
  for (int i = 0; i < kGroup; ++i) {
    if (!kFull && i * kLanes >= n) break;
    hi = U::max(hi, v[i]);
    if constexpr (!kSoftplus) lo = U::max(lo, U::sub(U::zero(), v[i]));
    v[i].store(dt + t + i * kLanes);  // the scratch has room for whole groups
    const float* u = a.u + row + t + i * kLanes;
    U::mul(v[i], kFull ? U::load(u) : load_part(u, n - i * kLanes)).store(dtu + t + i * kLanes);
  }
}

// One channel's chunk of `count` steps from row offset `row`: dt and dt * u into dt, dtu; returns
// the Decay the recurrence may use given amax = max |A log2 e| (< 0: some A > 0). softplus makes
// dt >= 0; a NaN dt may escape the max, but it makes dt * u, hence h, NaN whatever the decay.
template <typename U, bool kSoftplus>
inline int prep_lanes(const ScanArgs& a, int64_t ch, int64_t row, int64_t count, float amax,
                      float* dt, float* dtu) {
  const U bias = U::set1(a.delta_bias != nullptr ? a.delta_bias[ch] : 0.0f);
  U hi = U::zero(), lo = U::zero();  // max dt, max -dt
  int64_t t = 0;
  for (; t + kGroupSteps <= count; t += kGroupSteps) {
    prep_group<U, true, kSoftplus>(a, row, t, kGroupSteps, bias, dt, dtu, hi, lo);
  }
  if (t < count) prep_group<U, false, kSoftplus>(a, row, t, count - t, bias, dt, dtu, hi, lo);
  if (amax < 0.0f || U::hmax(lo) > 0.0f) return kAny;
  // dt A log2 e <= 0: no upper clamp; max dt * max |A log2 e| <= 126 (rounding is monotonic):
  // none at all
  return U::hmax(hi) * amax <= 126.0f ? kInRange : kNonPos;
}

// v * silu(z) = v z / (1 + e^-z) for kGroup vectors, into v, with e = e^-|z| (exp_neg_abs: no
// exp2 of its own, no overflow): v z / (1 + e) for z >= 0, v z e / (1 + e) for z < 0.
template <typename U>
inline void gate_group(U* v, const U* z) {
  U e[kGroup];
  exp_neg_abs(z, e);
  for (int i = 0; i < kGroup; ++i) {
    const U num = U::mul(U::mul(v[i], z[i]), U::select_neg(z[i], e[i], U::set1(1.0f)));
    v[i] = U::div(num, U::add(e[i], U::set1(1.0f)));
  }
}

// y = (y + D u) * silu(z) for one group of a channel's chunk, into the y row.
template <typename U, bool kFull>
inline void finish_group(const ScanArgs& a, int64_t row, int64_t t, int64_t n, U dskip,
                         const float* y) {
  U v[kGroup], z[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    const float* u = a.u + row + t + i * kLanes;
    const U uv = kFull ? U::load(u) : load_part(u, n - i * kLanes);
    v[i] = U::fma(dskip, uv, U::load(y + t + i * kLanes));
  }
  if (a.z != nullptr) {
    for (int i = 0; i < kGroup; ++i) {
      const float* zz = a.z + row + t + i * kLanes;
      z[i] = kFull ? U::load(zz) : load_part(zz, n - i * kLanes);
    }
    gate_group<U>(v, z);
  }
  for (int i = 0; i < kGroup; ++i) {
    float* out = a.y + row + t + i * kLanes;
    if (kFull) {
      v[i].store(out);
    } else {
      store_part(v[i], out, n - i * kLanes);
    }
  }
}

template <typename U>
inline void finish_lanes(const ScanArgs& a, int64_t ch, int64_t row, int64_t count,
                         const float* y) {
  const U dskip = U::set1(a.D[ch]);
  int64_t t = 0;
  for (; t + kGroupSteps <= count; t += kGroupSteps) {
    finish_group<U, true>(a, row, t, kGroupSteps, dskip, y);
  }
  if (t < count) finish_group<U, false>(a, row, t, count - t, dskip, y);
}

// Asks for the rows that the steps around a recurrence touch next: z (read) and y (written) of
// this chunk at `row` (finish_lanes), and delta and u of the next chunk at `next` (prep_lanes;
// none when next < 0), `count` and `next_count` steps: 32 lines, which arrive during the ~1300
// cycles of the recurrence, where the hardware prefetchers, seeing bursts of 8 lines per row,
// leave the first ones to miss (2-3% of the op on Zen 5; spread over the recurrence or two
// chunks ahead, as the channel-lane paths ask, the same).
inline void prefetch_rows(const ScanArgs& a, int64_t row, int64_t count, int64_t next,
                          int64_t next_count) {
  for (int64_t i = 0; i < count; i += kLineFloats) {
    if (a.z != nullptr) prefetch(a.z + row + i);
    prefetch(a.y + row + i);
  }
  for (int64_t i = 0; next >= 0 && i < next_count; i += kLineFloats) {
    prefetch(a.delta + next + i);
    prefetch(a.u + next + i);
  }
}

// scan_block with lanes across the state; false (nothing done) where V has registers enough or
// N is not W or 2 W.
template <typename U>
inline bool scan_block_lanes(const ScanArgs& a, int64_t b, int64_t c0, const float* bt_all,
                             const float* ct_all, float* scratch) {
  if constexpr (!FewRegisters<U>::value) {
    return false;
  } else {
    const int64_t L = a.length, N = a.state;
    if (N != kLanes && N != 2 * kLanes) return false;
    const int64_t end = a.dim - c0 < kLanes ? a.dim : c0 + kLanes;
    float* dt = scratch;  // (kLaneChunk + kGroupSteps) each: room for whole groups
    float* dtu = dt + kLaneChunk + kGroupSteps;
    float* y = dtu + kLaneChunk + kGroupSteps;
    float* a2 = y + kLaneChunk + kGroupSteps;  // (N): A * log2(e) of the channel
    float* h = a2 + N;                          // (N): its state
    // channel after channel, each along its whole row: long contiguous streams for the hardware
    // prefetchers (B and C come from L2)
    for (int64_t ch = c0; ch < end; ++ch) {
      float amax = 0.0f;  // max |A log2 e|; -1 where some A > 0 (or is NaN)
      for (int64_t n = 0; n < N; ++n) {
        a2[n] = a.A[ch * N + n] * kLog2e;
        h[n] = 0.0f;
        amax = a2[n] <= 0.0f && amax >= 0.0f ? (-a2[n] > amax ? -a2[n] : amax) : -1.0f;
      }
      for (int64_t t0 = 0; t0 < L; t0 += kLaneChunk) {
        const int64_t count = L - t0 < kLaneChunk ? L - t0 : kLaneChunk;
        const int64_t row = (b * a.dim + ch) * L + t0;
        const float* bt = bt_all + t0 * N;
        const float* ct = ct_all + t0 * N;
        const int decay = a.softplus ? prep_lanes<U, true>(a, ch, row, count, amax, dt, dtu)
                                     : prep_lanes<U, false>(a, ch, row, count, amax, dt, dtu);
        // prep_lanes' next chunk: this channel's next one, else the next channel's first
        const int64_t left = L - t0 - count;
        if (left > 0) {
          prefetch_rows(a, row, count, row + count, left < kLaneChunk ? left : kLaneChunk);
        } else {
          prefetch_rows(a, row, count, ch + 1 < end ? (b * a.dim + ch + 1) * L : -1,
                        L < kLaneChunk ? L : kLaneChunk);
        }
        if (N == kLanes) {
          recur_lanes<U, 1>(decay, count, dt, dtu, bt, ct, a2, h, y);
        } else {
          recur_lanes<U, 2>(decay, count, dt, dtu, bt, ct, a2, h, y);
        }
        finish_lanes<U>(a, ch, row, count, y);
      }
    }
    return true;
  }
}

// Floats of per-thread scratch that scan_block needs for a state size.
inline int64_t scratch_floats(int64_t state) {
  const int64_t lanes = 3 * (kLaneChunk + kGroupSteps) + 2 * state;  // scan_block_lanes
  const int64_t tiles = (4 * kChunk + 2 * state) * kLanes;
  return lanes > tiles ? lanes : tiles;
}

// One block: batch b, channels [c0, c0 + W). bt_all / ct_all: B and C of batch b, time-major
// (L, N). scratch: scratch_floats(N) floats.
inline void scan_block(const ScanArgs& a, int64_t b, int64_t c0, const float* bt_all,
                       const float* ct_all, float* scratch) {
  if (scan_block_lanes<V>(a, b, c0, bt_all, ct_all, scratch)) return;
  const int64_t L = a.length, N = a.state;
  const int valid = static_cast<int>(a.dim - c0 < kLanes ? a.dim - c0 : kLanes);
  float* dt_t = scratch;                 // (kChunk, W)
  float* dtu_t = dt_t + kChunk * kLanes;  // (kChunk, W)
  float* u_t = dtu_t + kChunk * kLanes;   // (kChunk, W)
  float* y_t = u_t + kChunk * kLanes;     // (kChunk, W)
  float* a2 = y_t + kChunk * kLanes;      // (N, W): A * log2(e)
  float* h = a2 + N * kLanes;             // (N, W): state
  const float* u_rows[kLanes];
  const float* d_rows[kLanes];
  const float* z_rows[kLanes];
  float* y_rows[kLanes];
  float bias[kLanes], dskip[kLanes];
  for (int c = 0; c < kLanes; ++c) {
    const int64_t ch = c < valid ? c0 + c : c0;  // lanes past the last channel repeat channel c0
    const int64_t row = (b * a.dim + ch) * L;
    u_rows[c] = a.u + row;
    d_rows[c] = a.delta + row;
    z_rows[c] = a.z != nullptr ? a.z + row : a.u + row;
    y_rows[c] = a.y + row;
    bias[c] = a.delta_bias != nullptr && c < valid ? a.delta_bias[ch] : 0.0f;
    dskip[c] = c < valid ? a.D[ch] : 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      a2[n * kLanes + c] = c < valid ? a.A[ch * N + n] * kLog2e : 0.0f;
      h[n * kLanes + c] = 0.0f;
    }
  }
  const V bias_v = V::load(bias), d_v = V::load(dskip);
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t count = L - t0 < kChunk ? L - t0 : kChunk;
    load_tile(d_rows, t0, count, valid, dt_t);
    load_tile(u_rows, t0, count, valid, u_t);
    for (int64_t t = 0; t < count; ++t) {  // (count, W): dt and dt * u
      V dt = V::add(V::load(dt_t + t * kLanes), bias_v);
      if (a.softplus) dt = vsoftplus(dt);
      dt.store(dt_t + t * kLanes);
      V::mul(dt, V::load(u_t + t * kLanes)).store(dtu_t + t * kLanes);
    }
    const float* bt = bt_all + t0 * N;
    const float* ct = ct_all + t0 * N;
    // the chunk after next (the first chunk: the next two as well); past this block's last
    // chunk, the next block's first ones (the next work item of a thread that runs them in order)
    RowPrefetch pf(L);
    const int64_t chunks = (L + kChunk - 1) / kChunk, ci = t0 / kChunk;
    for (int64_t cj = ci == 0 ? ci + 1 : ci + 2; cj <= ci + 2; ++cj) {
      const int64_t block = cj < chunks ? c0 : c0 + kLanes;
      const int64_t t2 = (cj < chunks ? cj : cj - chunks) * kChunk;
      const int rows = static_cast<int>(a.dim - block < kLanes ? a.dim - block : kLanes);
      if (rows <= 0 || t2 >= L) continue;
      const int64_t n = L - t2 < kChunk ? L - t2 : kChunk, first = (b * a.dim + block) * L + t2;
      pf.add(a.delta + first, rows, n);
      pf.add(a.u + first, rows, n);
      if (a.z != nullptr) pf.add(a.z + first, rows, n);
      pf.add(a.y + first, rows, n);
    }
    if (N == 16) {
      recur<16>(count, N, dt_t, dtu_t, bt, ct, a2, h, y_t, pf);
    } else {
      recur<0>(count, N, dt_t, dtu_t, bt, ct, a2, h, y_t, pf);
    }
    if (a.z != nullptr) load_tile(z_rows, t0, count, valid, dtu_t);  // dtu_t is free now: z
    for (int64_t t = 0; t < count; ++t) {  // y = (y + D u) * silu(z)
      V y = V::fma(d_v, V::load(u_t + t * kLanes), V::load(y_t + t * kLanes));
      if (a.z != nullptr) y = V::mul(y, vsilu(V::load(dtu_t + t * kLanes)));
      y.store(y_t + t * kLanes);
    }
    store_tile(y_t, t0, count, valid, y_rows);
  }
}
