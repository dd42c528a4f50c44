// The check program's third case: V::exp2 and V::max of one instruction set over whole vectors,
// so that tests can hold each path's numerics to another's bit for bit (simd.h: the same exp2
// polynomial and clamp, the same max on NaN). Included through simd.h once per instruction set,
// like the kernels' impl headers, so it includes nothing itself.

// exp2_out = 2^x, max_out = max(x, y), for n a multiple of V::W.
inline void vector_ops(const float* x, const float* y, int64_t n, float* exp2_out, float* max_out) {
  for (int64_t i = 0; i + V::W <= n; i += V::W) {
    V::exp2(V::load(x + i)).store(exp2_out + i);
    V::max(V::load(x + i), V::load(y + i)).store(max_out + i);
  }
}
