// The SelectiveScan compute kernel, written once over a SIMD vector type `V` (W float lanes).
//
// This file is included by selective_scan.cc once per instruction set, inside a namespace that
// defines `V` (scalar, AVX2 or AVX-512) and under the matching `#pragma GCC target`, so it must
// not include anything itself. Vectors run across channels: one lane per channel of a block of W
// channels, so the sum over the state index n is a plain vector FMA and the state h[n] of every
// lane stays in registers; B_t[n] and C_t[n] are shared by all channels and are broadcast.
//
// Per block and per chunk of kChunk time steps:
//   1. transpose delta and u rows of W channels into time-major tiles (t, lane);
//   2. dt = softplus(delta + delta_bias), dtu = dt * u;
//   3. recurrence h[n] = 2^(dt * A[n] * log2 e) * h[n] + dtu * B_t[n];  y_t = sum_n C_t[n] h[n];
//   4. y = (y + D * u) * silu(z) (z transposed like u), transpose back into the channel rows.

constexpr int kLanes = V::W;

// 2^x for the state decay; exp(x) = 2^(x log2 e).
inline V vexp(V x) { return V::exp2(V::mul(x, V::set1(kLog2e))); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), log1p(e) = 2 atanh(e / (2 + e)) by its series in
// f^2 <= 1/9: accurate for tiny e (no 1 + e rounding) and equal to x for x > 20 like torch.
inline V vsoftplus(V x) {
  V e = vexp(V::sub(V::zero(), V::max(x, V::sub(V::zero(), x))));
  V f = V::div(e, V::add(V::set1(2.0f), e));
  V g = V::mul(f, f);
  V s = V::set1(1.0f / 15.0f);
  s = V::fma(s, g, V::set1(1.0f / 13.0f));
  s = V::fma(s, g, V::set1(1.0f / 11.0f));
  s = V::fma(s, g, V::set1(1.0f / 9.0f));
  s = V::fma(s, g, V::set1(1.0f / 7.0f));
  s = V::fma(s, g, V::set1(1.0f / 5.0f));
  s = V::fma(s, g, V::set1(1.0f / 3.0f));
  s = V::fma(s, g, V::set1(1.0f));
  return V::add(V::max(x, V::zero()), V::mul(V::add(f, f), s));
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

// The recurrence over `count` steps of one chunk. NS > 0: the state size is a compile-time
// constant and h lives in registers; NS == 0: any state size, h in the `h` scratch.
template <int NS>
inline void recur(int64_t count, int64_t state, const float* dt_t, const float* dtu_t,
                  const float* b_t, const float* c_t, const float* a2, float* h, float* y_t) {
  const int64_t n_state = NS > 0 ? NS : state;
  if constexpr (NS > 0) {
    V hr[NS];
    for (int n = 0; n < NS; ++n) hr[n] = V::load(h + n * kLanes);
    for (int64_t t = 0; t < count; ++t) {
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

// Floats of per-thread scratch that scan_block needs for a state size.
inline int64_t scratch_floats(int64_t state) { return (4 * kChunk + 2 * state) * kLanes; }

// One block: batch b, channels [c0, c0 + W). bt_all / ct_all: B and C of batch b, time-major
// (L, N). scratch: scratch_floats(N) floats.
inline void scan_block(const ScanArgs& a, int64_t b, int64_t c0, const float* bt_all,
                       const float* ct_all, float* scratch) {
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
    if (N == 16) {
      recur<16>(count, N, dt_t, dtu_t, bt, ct, a2, h, y_t);
    } else {
      recur<0>(count, N, dt_t, dtu_t, bt, ct, a2, h, y_t);
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
