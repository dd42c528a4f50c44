// One-position (decode) grouped-query attention over a KV cache, written once over a SIMD vector
// type `V` (W float lanes).
//
// Included by attention.cc through simd.h once per instruction set, inside a namespace that
// defines `V` and under the matching `#pragma GCC target`, so it includes nothing itself. It
// needs AttnArgs from attention.cc.
//
// attend_part handles the r = num_heads / kv_heads query heads of one (batch row b, kv head g)
// over one range of its cached positions (attention.cc splits long caches into ranges for more
// threads, then merges the ranges' partial softmaxes):
//   1. its rows of the cache: past rows copied to present when the buffers differ; the range that
//      ends at pos = seqlens_k[b] writes the new key (RoPE, rotate-half) and value there;
//   2. the r queries rotated and scaled by scale * log2(e), so that the softmax is a plain 2^x;
//   3. scores s[j][t] = q_j . k_t, every key row read once for all r heads;
//   4. p = 2^(s - max), per head, and its sum;
//   5. out_j = sum_t p[j][t] v_t (unnormalized), value rows read once and in order with the
//      accumulators in registers where head_dim is 4 or 8 vectors (see weighted_values).

constexpr int kLanes = V::W;
constexpr int kMaxGroup = 8;  // query heads per register block (Qwen2.5: 7 at 0.5b, 6 at 1.5b)

// q (nj x hd, contiguous) against keys t = 0..T-1 (rows of hd) -> s (nj rows of stride lds),
// one key row at a time for all nj heads. (Tried: W keys at a time through a W x W transpose,
// no horizontal sums: slower in the 0.5b decoder, 16.8 vs 15.8 ms per int4-b128 step - the
// pass is bound by reading the cache, not by the sums.)
template <int NJ>
void scores(const float* q, const float* keys, int64_t T, int64_t hd, float* s, int64_t lds) {
  for (int64_t t = 0; t < T; ++t) {
    const float* k = keys + t * hd;
    V acc[NJ];
    for (int j = 0; j < NJ; ++j) acc[j] = V::zero();
    for (int64_t d = 0; d < hd; d += V::W) {
      const V kv = V::load(k + d);
      for (int j = 0; j < NJ; ++j) acc[j] = V::fma(V::load(q + j * hd + d), kv, acc[j]);
    }
    for (int j = 0; j < NJ; ++j) s[j * lds + t] = V::sum(acc[j]);
  }
}

// out (nj x hd) = p (nj rows of stride ldp, T columns) @ values (T rows of hd), row j times inv[j].
// NC = hd / W known: the NJ x NC accumulators stay in registers (7 x 4 at Qwen2.5-0.5B and
// AVX-512) and the value rows are read once, in order.
template <int NJ, int NC>
void weighted_values_rows(const float* p, int64_t ldp, const float* values, int64_t T,
                          const float* inv, float* out) {
  constexpr int64_t hd = NC * V::W;
  V acc[NJ][NC];
  for (int j = 0; j < NJ; ++j)
    for (int c = 0; c < NC; ++c) acc[j][c] = V::zero();
  for (int64_t t = 0; t < T; ++t) {
    const float* v = values + t * hd;
    for (int c = 0; c < NC; ++c) {
      const V vv = V::load(v + c * V::W);
      for (int j = 0; j < NJ; ++j) acc[j][c] = V::fma(V::set1(p[j * ldp + t]), vv, acc[j][c]);
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int c = 0; c < NC; ++c) V::mul(acc[j][c], V::set1(inv[j])).store(out + j * hd + c * V::W);
}

// any hd: one W-wide column block of the values at a time
template <int NJ>
void weighted_values_columns(const float* p, int64_t ldp, const float* values, int64_t T,
                             int64_t hd, const float* inv, float* out) {
  for (int64_t d = 0; d < hd; d += V::W) {
    V acc[NJ];
    for (int j = 0; j < NJ; ++j) acc[j] = V::zero();
    const float* v = values + d;
    for (int64_t t = 0; t < T; ++t, v += hd) {
      const V vv = V::load(v);
      for (int j = 0; j < NJ; ++j) acc[j] = V::fma(V::set1(p[j * ldp + t]), vv, acc[j]);
    }
    for (int j = 0; j < NJ; ++j) V::mul(acc[j], V::set1(inv[j])).store(out + j * hd + d);
  }
}

template <int NJ>
void weighted_values(const float* p, int64_t ldp, const float* values, int64_t T, int64_t hd,
                     const float* inv, float* out) {
  if (hd == 4 * V::W) return weighted_values_rows<NJ, 4>(p, ldp, values, T, inv, out);
  if (hd == 8 * V::W) return weighted_values_rows<NJ, 8>(p, ldp, values, T, inv, out);
  weighted_values_columns<NJ>(p, ldp, values, T, hd, inv, out);
}

// s <- 2^(s - max s) in place; returns the sum, and the max in *max_out
inline float exp2_shifted(float* s, int64_t T, float* max_out) {
  const int64_t full = T - T % V::W;
  float mx = -INFINITY;
  if (full > 0) {
    V m = V::load(s);
    for (int64_t t = V::W; t < full; t += V::W) m = V::max(m, V::load(s + t));
    mx = V::hmax(m);
  }
  for (int64_t t = full; t < T; ++t) mx = s[t] > mx ? s[t] : mx;
  const V vmx = V::set1(mx);
  V acc = V::zero();
  for (int64_t t = 0; t < full; t += V::W) {
    const V e = V::exp2(V::sub(V::load(s + t), vmx));
    e.store(s + t);
    acc = V::add(acc, e);
  }
  float total = V::sum(acc);
  for (int64_t t = full; t < T; ++t) {
    s[t] = std::exp2(s[t] - mx);
    total += s[t];
  }
  *max_out = mx;
  return total;
}

// nj heads over T keys: unnormalized out (nj x hd) = sum_t 2^(s_t - m) v_t, and per head
// stats[2j] = m (max score, log2 units), stats[2j + 1] = sum_t 2^(s_t - m)
template <int NJ>
void group_block(const float* q, const float* keys, const float* values, int64_t T, int64_t hd,
                 float* s, float* out, float* stats) {
  scores<NJ>(q, keys, T, hd, s, T);
  float one[NJ];
  for (int j = 0; j < NJ; ++j) {
    stats[2 * j + 1] = exp2_shifted(s + j * T, T, &stats[2 * j]);
    one[j] = 1.0f;
  }
  weighted_values<NJ>(s, T, values, T, hd, one, out);
}

using GroupBlockFn = void (*)(const float*, const float*, const float*, int64_t, int64_t, float*,
                              float*, float*);
constexpr GroupBlockFn kGroupBlocks[kMaxGroup] = {
    group_block<1>, group_block<2>, group_block<3>, group_block<4>,
    group_block<5>, group_block<6>, group_block<7>, group_block<8>};

// Floats of scratch one attend_part call over `keys` keys needs.
inline int64_t scratch_floats(const AttnArgs& a, int64_t keys) {
  return (a.num_heads / a.kv_heads) * a.head_dim + kMaxGroup * (keys + a.head_dim);
}

// rotate-half RoPE of x (hd) at table row c/s (hd/2 each), times `mul`, into y
inline void rotate(const float* x, const float* c, const float* s, int64_t hd, float mul,
                   float* y) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    y[i] = (x1 * c[i] - x2 * s[i]) * mul;
    y[i + half] = (x2 * c[i] + x1 * s[i]) * mul;
  }
}

// The r query heads of batch row b, kv head g over keys [t0, t1) of its T = seqlens_k[b] + 1:
// first the rows this range owns - past rows copied into present when not in place, and the new
// key (rotated) and value at row T - 1 when the range ends there - then part = r blocks of
// (hd unnormalized outputs, max score, sum of 2^(score - max)). scratch: scratch_floats(a, t1 - t0).
inline void attend_part(const AttnArgs& a, int64_t b, int64_t g, int64_t t0, int64_t t1,
                        float* scratch, float* part) {
  const int64_t hd = a.head_dim, r = a.num_heads / a.kv_heads;
  const int64_t pos = a.seqlens_k[b], n = t1 - t0;
  const float* cs = a.cos != nullptr ? a.cos + pos * (hd / 2) : nullptr;
  const float* sn = a.sin != nullptr ? a.sin + pos * (hd / 2) : nullptr;
  const int64_t row = (b * a.kv_heads + g) * a.present_len;  // first row of (b, g) in present
  float* keys = a.present_key + row * hd;
  float* values = a.present_value + row * hd;
  const int64_t past_end = t1 < pos ? t1 : pos;
  if (a.past_key != a.present_key && past_end > t0) {  // not in place: this range's past rows
    const int64_t past_row = (b * a.kv_heads + g) * a.past_len;
    std::memcpy(keys + t0 * hd, a.past_key + (past_row + t0) * hd, sizeof(float) * (past_end - t0) * hd);
    std::memcpy(values + t0 * hd, a.past_value + (past_row + t0) * hd,
                sizeof(float) * (past_end - t0) * hd);
  }
  if (t1 == pos + 1) {  // the range holding the new position writes it
    const float* k_new = a.key + b * a.kv_stride + g * hd;
    if (cs != nullptr) {
      rotate(k_new, cs, sn, hd, 1.0f, keys + pos * hd);
    } else {
      std::memcpy(keys + pos * hd, k_new, sizeof(float) * hd);
    }
    std::memcpy(values + pos * hd, a.value + b * a.kv_stride + g * hd, sizeof(float) * hd);
  }
  float* q = scratch;  // r x hd rotated queries, scaled by scale * log2(e)
  float* s = q + r * hd;  // kMaxGroup x n scores
  float* out = s + kMaxGroup * n;  // kMaxGroup x hd unnormalized outputs
  const float mul = a.scale * kLog2e;
  for (int64_t j = 0; j < r; ++j) {
    const float* qj = a.query + b * a.q_stride + (g * r + j) * hd;
    if (cs != nullptr) {
      rotate(qj, cs, sn, hd, mul, q + j * hd);
    } else {
      for (int64_t i = 0; i < hd; ++i) q[j * hd + i] = qj[i] * mul;
    }
  }
  float stats[2 * kMaxGroup];
  for (int64_t j0 = 0; j0 < r; j0 += kMaxGroup) {
    const int64_t nj = r - j0 < kMaxGroup ? r - j0 : kMaxGroup;
    kGroupBlocks[nj - 1](q + j0 * hd, keys + t0 * hd, values + t0 * hd, n, hd, s, out, stats);
    for (int64_t j = 0; j < nj; ++j) {
      float* dst = part + (j0 + j) * (hd + 2);
      std::memcpy(dst, out + j * hd, sizeof(float) * hd);
      dst[hd] = stats[2 * j];
      dst[hd + 1] = stats[2 * j + 1];
    }
  }
}
