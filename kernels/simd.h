// The SIMD vector types of the mvgpt kernels, one namespace per instruction set.
//
// Included once by each op's plain header (scan_kernel.h, attention_kernel.h) inside its
// namespace, after cpu.h (the architecture switch and intrinsics), after `#define MVGPT_SIMD_IMPL
// "<its impl header>"` and after the names that impl header needs, so it includes nothing but
// that header. Each namespace defines `V` (W float lanes: load/store, arithmetic, exp2,
// horizontal sum/max, W x W tile transposes) and then includes MVGPT_SIMD_IMPL, compiled under
// that namespace's target (`#pragma GCC target`; clang: `#pragma clang attribute`). The scalar
// namespace needs no extension and compiles on any architecture; NEON is baseline on AArch64.

#ifndef MVGPT_SIMD_IMPL
#error "define MVGPT_SIMD_IMPL (the kernel header to compile once per instruction set) first"
#endif

// 2^f on [0, 1), degree 5, fitted for relative error (max 1.7e-7 evaluated in fp32).
constexpr float kP0 = 0.9999999403953552f, kP1 = 0.6931530833244324f, kP2 = 0.24015362560749054f,
                kP3 = 0.05582631379365921f, kP4 = 0.008989344350993633f,
                kP5 = 0.0018775751814246178f;

// ---------------------------------------------------------------- scalar (any CPU)
namespace scalar {
struct V {
  static constexpr int W = 1;
  float v;
  static V load(const float* p) { return {*p}; }
  void store(float* p) const { *p = v; }
  static V set1(float x) { return {x}; }
  static V zero() { return {0.0f}; }
  static V add(V a, V b) { return {a.v + b.v}; }
  static V sub(V a, V b) { return {a.v - b.v}; }
  static V mul(V a, V b) { return {a.v * b.v}; }
  static V div(V a, V b) { return {a.v / b.v}; }
  static V max(V a, V b) { return {a.v > b.v ? a.v : b.v}; }
  static V fma(V a, V b, V c) { return {a.v * b.v + c.v}; }
  static V exp2(V x) { return {std::exp2(x.v)}; }
  static float sum(V a) { return a.v; }
  static float hmax(V a) { return a.v; }
  static void transpose(const float* const* rows, int64_t t0, float* dst) { *dst = rows[0][t0]; }
  static void transpose_out(const float* src, float* const* rows, int64_t t0) {
    rows[0][t0] = *src;
  }
};
#include MVGPT_SIMD_IMPL
}  // namespace scalar

#if MVGPT_X86
// ---------------------------------------------------------------- AVX2 + FMA (8 lanes)
#if defined(__clang__)  // clang has no `#pragma GCC target`: the same attribute on every function
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
// 2^r on [-1/16, 1/16] as 1 + r (kR1 + r (kR2 + r kR3)): exact at 0, fitted for relative error
// (2.5e-8); with exp2_nonpos's table of 2^(j/8), 1.3e-7 in fp32 over [-126, 0].
constexpr float kR1 = 0.6931472420692444f, kR2 = 0.2402576208114624f, kR3 = 0.0554962158203125f;
// The bits of 2^(j/8) (j = 0..7) as fp32, each less j << 20 (exp2_nonpos adds n << 20, n = 8k + j)
constexpr int kExp2Table[8] = {1065353216, 1065063874, 1064843248, 1064697559,
                               1064633587, 1064658730, 1064781053, 1065009351};
struct V {
  static constexpr int W = 8;
  static constexpr int kRegisters = 16;
  __m256 v;
  static V load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return {_mm256_set1_ps(x)}; }
  static V zero() { return {_mm256_setzero_ps()}; }
  static V add(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
  static V sub(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static V mul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static V div(V a, V b) { return {_mm256_div_ps(a.v, b.v)}; }
  static V max(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
  static V min(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }  // b where either is NaN
  static V abs(V a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  // a in the lanes where s's sign bit is set (s < 0, -0, NaNs so signed), b in the others
  static V select_neg(V s, V a, V b) { return {_mm256_blendv_ps(b.v, a.v, s.v)}; }
  static V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float hmax(V a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static V exp2(V x) {
    // Clamp so that the exponent field stays valid: 2^-127 becomes 0, 2^127 the largest power.
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x.v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    __m256 k = _mm256_round_ps(xc, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(xc, k);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP5), f, _mm256_set1_ps(kP4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP0));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p, _mm256_castsi256_ps(e))};
  }
  // 2^x for K vectors x <= 0 in place, stage by stage (K independent chains interleaved for the
  // out-of-order core): the selective scan's state decay (dt >= 0 times A <= 0), and e^-|x|.
  // t = x + 1.5 * 2^20 rounds x to n / 8 (n = 8k + j in t's low mantissa bits); 2^(j/8) from a
  // register table (vpermps reads the low 3 bits of t) with k << 23 added to its exponent field
  // as an integer (t << 20 = n << 20; the table entries are less j << 20); then 2^r for the
  // remainder |r| <= 1/16 by a degree-3 polynomial exact at 0: 5 FMA-pipe operations with dt * A
  // (a degree-5 2^f on [-1/2, 1/2] needed 6) and a dependent chain 6 cycles shorter, which is what
  // bounds the recurrence (its FP scheduler fills with waiting chains). kClamp: x below -126 (NaN
  // too) reads as -126; without it the caller guarantees -126 <= x <= 0.
  template <int K, bool kClamp = true>
  static void exp2_nonpos(V* x) {
    const __m256 magic = _mm256_set1_ps(1572864.0f);  // 1.5 * 2^20: its ulp is 1/8
    const __m256 table = _mm256_castsi256_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(kExp2Table)));
    __m256 r[K], s[K];
    for (int i = 0; i < K; ++i) {
      const __m256 xc = kClamp ? _mm256_max_ps(x[i].v, _mm256_set1_ps(-126.0f)) : x[i].v;
      const __m256 t = _mm256_add_ps(xc, magic);
      r[i] = _mm256_sub_ps(xc, _mm256_sub_ps(t, magic));
      const __m256i n = _mm256_castps_si256(t);
      s[i] = _mm256_castsi256_ps(_mm256_add_epi32(
          _mm256_castps_si256(_mm256_permutevar8x32_ps(table, n)), _mm256_slli_epi32(n, 20)));
    }
    for (int i = 0; i < K; ++i) {
      __m256 q = _mm256_fmadd_ps(r[i], _mm256_set1_ps(kR3), _mm256_set1_ps(kR2));
      q = _mm256_fmadd_ps(q, r[i], _mm256_set1_ps(kR1));
      x[i].v = _mm256_fmadd_ps(_mm256_mul_ps(s[i], r[i]), q, s[i]);  // 2^(n/8) (1 + r q)
    }
  }
  // lane i = the sum of v[i]'s lanes, for the 8 vectors v[0..7], by shuffles and adds (vhaddps
  // is three instructions on Intel). In two steps, so that a caller can fold each pair as soon
  // as it has it (4 vectors live instead of 8): sum_pair(v[2i], v[2i + 1]) = s[i], then
  // sums_of_pairs(s).
  static V sums(const V* v) {
    V s[4];
    for (int i = 0; i < 4; ++i) s[i] = sum_pair(v[2 * i], v[2 * i + 1]);
    return sums_of_pairs(s);
  }
  // per 128-bit half: a0 + a2, b0 + b2, a1 + a3, b1 + b3
  static V sum_pair(V a, V b) {
    return {_mm256_add_ps(_mm256_unpacklo_ps(a.v, b.v), _mm256_unpackhi_ps(a.v, b.v))};
  }
  static V sums_of_pairs(const V* s) {
    __m256 u[2];  // u[j], per 128-bit half: that half's sums of v[4j..4j+3]
    for (int j = 0; j < 2; ++j) {
      u[j] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * j].v, s[2 * j + 1].v, 0x44),
                           _mm256_shuffle_ps(s[2 * j].v, s[2 * j + 1].v, 0xEE));
    }
    return {_mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                          _mm256_permute2f128_ps(u[0], u[1], 0x31))};
  }
  // 8x8 transposes between 8 channel rows and a time-major (t, lane) tile.
  static void transpose8(__m256 r[8]) {
    __m256 a[8], b[8];
    for (int k = 0; k < 4; ++k) {
      a[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      a[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int m = 0; m < 2; ++m) {  // b[4m + j], 128-bit lane l: column 4l + j of rows 4m..4m+3
      __m256d x0 = _mm256_castps_pd(a[4 * m]), x1 = _mm256_castps_pd(a[4 * m + 1]);
      __m256d x2 = _mm256_castps_pd(a[4 * m + 2]), x3 = _mm256_castps_pd(a[4 * m + 3]);
      b[4 * m + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(x0, x2));
      b[4 * m + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(x0, x2));
      b[4 * m + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(x1, x3));
      b[4 * m + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(x1, x3));
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_permute2f128_ps(b[j], b[4 + j], 0x20);
      r[4 + j] = _mm256_permute2f128_ps(b[j], b[4 + j], 0x31);
    }
  }
  static void transpose(const float* const* rows, int64_t t0, float* dst) {
    __m256 r[8];
    for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(rows[c] + t0);
    transpose8(r);
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + 8 * t, r[t]);
  }
  static void transpose_out(const float* src, float* const* rows, int64_t t0) {
    __m256 r[8];
    for (int t = 0; t < 8; ++t) r[t] = _mm256_loadu_ps(src + 8 * t);
    transpose8(r);
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(rows[c] + t0, r[c]);
  }
};
#include MVGPT_SIMD_IMPL
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---------------------------------------------------------------- AVX-512 (16 lanes)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
// GCC 12's AVX-512 intrinsics start from a self-initialized _mm512_undefined_ps(): a false
// -Wmaybe-uninitialized at every inlined call (GCC bug 105593, fixed in 12.3 and 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace avx512 {
struct V {
  static constexpr int W = 16;
  __m512 v;
  static V load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return {_mm512_set1_ps(x)}; }
  static V zero() { return {_mm512_setzero_ps()}; }
  static V add(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
  static V sub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static V mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static V div(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
  static V max(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
  static V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static float sum(V a) { return _mm512_reduce_add_ps(a.v); }
  static float hmax(V a) { return _mm512_reduce_max_ps(a.v); }
  static V exp2(V x) {
    // 2^x = 2^floor(x) * 2^f, f = x - floor(x) in [0, 1) in one vreduceps; vscalefps takes the
    // floor of x itself and handles overflow and underflow.
    __m512 f = _mm512_reduce_ps(x.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP5), f, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP0));
    return {_mm512_scalef_ps(p, x.v)};
  }
  // 16x16 transposes between 16 channel rows and a time-major (t, lane) tile.
  static void transpose16(__m512 r[16]) {
    __m512 a[16], b[16];
    for (int k = 0; k < 8; ++k) {
      a[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int m = 0; m < 4; ++m) {  // b[4m + j], 128-bit lane l: column 4l + j of rows 4m..4m+3
      __m512d x0 = _mm512_castps_pd(a[4 * m]), x1 = _mm512_castps_pd(a[4 * m + 1]);
      __m512d x2 = _mm512_castps_pd(a[4 * m + 2]), x3 = _mm512_castps_pd(a[4 * m + 3]);
      b[4 * m + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
      b[4 * m + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
      b[4 * m + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
      b[4 * m + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
    for (int j = 0; j < 4; ++j) {  // 4x4 transpose of 128-bit lanes over b[j], b[4+j], ...
      __m512 c0 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0x44);
      __m512 c1 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0xEE);
      __m512 c2 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0x44);
      __m512 c3 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0xEE);
      r[j] = _mm512_shuffle_f32x4(c0, c2, 0x88);
      r[4 + j] = _mm512_shuffle_f32x4(c0, c2, 0xDD);
      r[8 + j] = _mm512_shuffle_f32x4(c1, c3, 0x88);
      r[12 + j] = _mm512_shuffle_f32x4(c1, c3, 0xDD);
    }
  }
  static void transpose(const float* const* rows, int64_t t0, float* dst) {
    __m512 r[16];
    for (int c = 0; c < 16; ++c) r[c] = _mm512_loadu_ps(rows[c] + t0);
    transpose16(r);
    for (int t = 0; t < 16; ++t) _mm512_storeu_ps(dst + 16 * t, r[t]);
  }
  static void transpose_out(const float* src, float* const* rows, int64_t t0) {
    __m512 r[16];
    for (int t = 0; t < 16; ++t) r[t] = _mm512_loadu_ps(src + 16 * t);
    transpose16(r);
    for (int c = 0; c < 16; ++c) _mm512_storeu_ps(rows[c] + t0, r[c]);
  }
};
#include MVGPT_SIMD_IMPL
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MVGPT_X86

#if MVGPT_ARM
// ---------------------------------------------------------------- NEON (AArch64, 4 lanes)
// Baseline on AArch64, so no target pragma. The numerics follow AVX2's: the same exp2 polynomial
// and clamp, max(a, b) = a > b ? a : b like _mm256_max_ps (vmaxq_f32 would return NaN for NaN).
//
// Cost of one scan step per (state, channel): selective_scan_impl.h's recur<16> time loop at
// 530623a, instructions / (16 states x W lanes), g++ 12 -O3, objdump -d: NEON 459 / 64 = 7.2,
// AVX2 357 / 128 = 2.8, AVX-512 207 / 256 = 0.8. Beyond its width NEON pays for FMLA overwriting
// its addend (each Horner step copies its constant first: 98 movs) and for spills (41 loads and
// stores: h[16], the A rows and the constants do not fit in 32 registers).
namespace neon {
struct V {
  static constexpr int W = 4;
  float32x4_t v;
  static V load(const float* p) { return {vld1q_f32(p)}; }
  void store(float* p) const { vst1q_f32(p, v); }
  static V set1(float x) { return {vdupq_n_f32(x)}; }
  static V zero() { return {vdupq_n_f32(0.0f)}; }
  static V add(V a, V b) { return {vaddq_f32(a.v, b.v)}; }
  static V sub(V a, V b) { return {vsubq_f32(a.v, b.v)}; }
  static V mul(V a, V b) { return {vmulq_f32(a.v, b.v)}; }
  static V div(V a, V b) { return {vdivq_f32(a.v, b.v)}; }
  static V max(V a, V b) { return {vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v)}; }
  static V fma(V a, V b, V c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
  static float sum(V a) { return vaddvq_f32(a.v); }
  static float hmax(V a) { return vmaxvq_f32(a.v); }
  static V exp2(V x) {
    // Clamp so that the exponent field stays valid: 2^-127 becomes 0, 2^127 the largest power.
    // maxnm/minnm take the number when x is NaN (-127: 0 out), as _mm256_max_ps(x, -127) does.
    float32x4_t xc = vminnmq_f32(vmaxnmq_f32(x.v, vdupq_n_f32(-127.0f)), vdupq_n_f32(127.0f));
    float32x4_t k = vrndmq_f32(xc);
    float32x4_t f = vsubq_f32(xc, k);
    float32x4_t p = vfmaq_f32(vdupq_n_f32(kP4), vdupq_n_f32(kP5), f);
    p = vfmaq_f32(vdupq_n_f32(kP3), p, f);
    p = vfmaq_f32(vdupq_n_f32(kP2), p, f);
    p = vfmaq_f32(vdupq_n_f32(kP1), p, f);
    p = vfmaq_f32(vdupq_n_f32(kP0), p, f);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
    return {vmulq_f32(p, vreinterpretq_f32_s32(e))};
  }
  // 4x4 transposes between 4 channel rows and a time-major (t, lane) tile: st4 interleaves four
  // rows into the tile, ld4 splits the tile back into rows.
  static void transpose(const float* const* rows, int64_t t0, float* dst) {
    float32x4x4_t r;
    for (int c = 0; c < 4; ++c) r.val[c] = vld1q_f32(rows[c] + t0);
    vst4q_f32(dst, r);
  }
  static void transpose_out(const float* src, float* const* rows, int64_t t0) {
    const float32x4x4_t r = vld4q_f32(src);
    for (int c = 0; c < 4; ++c) vst1q_f32(rows[c] + t0, r.val[c]);
  }
};
#include MVGPT_SIMD_IMPL
}  // namespace neon
#endif  // MVGPT_ARM
