// kernel_check: one SelectiveScan or decode-attention case through the library's kernels, without
// onnxruntime, so that a build for another CPU (cross-compiled, run under an emulator) can be
// checked against a float64 reference. It compiles the very headers the library's ops do
// (scan_kernel.h, attention_kernel.h: the same impl headers, dispatch, range split and merge) and
// runs their work items on one thread; a third case runs simd.h's exp2 and max alone.
// tests/kernel_cases.py writes the cases and reads the output.
//
//   kernel_check CASE OUT [ISA]
//
// ISA: scalar | neon | avx2 | avx512; absent or empty: the widest this CPU has. For attention it
// caps the choice like MVGPT_ATTENTION_ISA (the widest set up to it whose width divides
// head_dim). Prints "op=scan isa=<the path that ran>", "op=attention isa=<path> ranges=<n>" or
// "op=vector isa=<path>".
// Exit status 2: usage (an ISA this CPU lacks or an unknown one); 1: a bad case file.
//
// CASE, little-endian: an 8-byte tag, int64 fields, then float32 arrays (seqlens_k: int32).
//   "MVGSCAN1" batch dim length state has_z has_bias softplus;
//     u, delta (B,D,L); A (D,N); B, C (B,N,L); D (D); z (B,D,L) if has_z; delta_bias (D) if
//     has_bias.  OUT: y (B,D,L).
//   "MVGATTN1" batch num_heads kv_heads head_dim cache rotary_rows in_place;
//     scale (1); query (B, (num_heads + 2 kv_heads) head_dim): q, k, v packed; seqlens_k (B);
//     past_key, past_value (B, kv_heads, cache, head_dim); cos, sin (rotary_rows, head_dim / 2)
//     if rotary_rows > 0.  OUT: output (B, num_heads head_dim), present_key, present_value (B,
//     kv_heads, cache, head_dim): past's own buffers when in_place, else new zeroed ones.
//   "MVGVECT1" n (a multiple of 16); x, y (n).  OUT: V::exp2(x), V::max(x, y) (vector_impl.h).

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../attention_kernel.h"
#include "case_file.h"
#include "../scan_kernel.h"

namespace mvgpt {
namespace vec {
#define MVGPT_SIMD_IMPL "check/vector_impl.h"  // found beside simd.h: kernels/check/
#include "../simd.h"
#undef MVGPT_SIMD_IMPL

using Fn = void (*)(const float*, const float*, int64_t, float*, float*);
inline Fn path(Isa isa) {
  switch (isa) {
#if MVGPT_X86
    case kAvx2:
      return avx2::vector_ops;
    case kAvx512:
      return avx512::vector_ops;
#endif
#if MVGPT_ARM
    case kNeon:
      return neon::vector_ops;
#endif
    default:
      return scalar::vector_ops;
  }
}
}  // namespace vec
}  // namespace mvgpt

namespace {

using mvgpt::Isa;

void run_scan(Reader& in, const char* out, Isa isa) {
  namespace scan = mvgpt::scan;
  ScanCase c(in);
  const scan::ScanArgs a = c.args([](const std::vector<float>& v) { return v.data(); }, c.y.data());
  const scan::Path path = scan::path(isa);
  if (a.batch * a.dim * a.length > 0) {
    const std::vector<float> bc = scan::time_major_bc(a);
    float* scratch = mvgpt::thread_scratch(path.scratch(a.state));
    for (int64_t i = 0; i < scan::item_count(a, path); ++i) {
      scan::run_item(a, path, bc.data(), i, scratch);
    }
  }
  write(out, {&c.y});
  std::printf("op=scan isa=%s\n", mvgpt::kIsaNames[path.isa]);
}

void run_attention(Reader& in, const char* out, Isa cap) {
  namespace attn = mvgpt::attn;
  const int64_t B = in.i64("batch"), nh = in.i64("num_heads"), kvh = in.i64("kv_heads");
  const int64_t hd = in.i64("head_dim"), cache = in.i64("cache");
  const int64_t rows = in.i64("rotary_rows"), in_place = in.i64("in_place");
  if (B == 0 || kvh == 0 || hd == 0 || nh % kvh != 0 || (rows > 0 && hd % 2 != 0)) {
    throw BadCase(
        "attention case: expected batch, kv_heads, head_dim > 0, num_heads a multiple "
        "of kv_heads and an even head_dim with rotary, got batch " +
        std::to_string(B) + ", heads " + std::to_string(nh) + "/" + std::to_string(kvh) +
        ", head_dim " + std::to_string(hd));
  }
  const int64_t width = (nh + 2 * kvh) * hd, kv_floats = B * kvh * cache * hd;
  const auto scale = in.array<float>(1, "scale");
  const auto query = in.array<float>(B * width, "query");
  const auto seqlens = in.array<int32_t>(B, "seqlens_k");
  auto past_key = in.array<float>(kv_floats, "past_key");
  auto past_value = in.array<float>(kv_floats, "past_value");
  const auto cos = in.array<float>(rows * hd / 2, "cos");
  const auto sin = in.array<float>(rows * hd / 2, "sin");
  in.expect_end();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pos = seqlens[b];
    if (pos < 0 || pos >= cache || (rows > 0 && pos >= rows)) {
      throw BadCase("seqlens_k[" + std::to_string(b) + "] = " + std::to_string(pos) +
                    ": expected 0 <= seqlens_k < cache " + std::to_string(cache) +
                    (rows > 0 ? " and rotary rows " + std::to_string(rows) : std::string()));
    }
    longest = std::max(longest, pos + 1);
  }
  std::vector<float> output(static_cast<size_t>(B * nh * hd));
  std::vector<float> own_key, own_value;
  if (!in_place) {
    own_key.assign(past_key.size(), 0.0f);
    own_value.assign(past_value.size(), 0.0f);
  }
  std::vector<float>& present_key = in_place ? past_key : own_key;
  std::vector<float>& present_value = in_place ? past_value : own_value;
  const float* q = query.data();
  attn::AttnArgs a{};
  a.batch = B;
  a.num_heads = nh;
  a.kv_heads = kvh;
  a.head_dim = hd;
  a.past_len = a.present_len = cache;
  a.q_stride = a.kv_stride = width;  // q, k and v packed in one row
  a.scale = scale[0];
  a.query = q;
  a.key = q + nh * hd;
  a.value = q + (nh + kvh) * hd;
  a.past_key = past_key.data();
  a.past_value = past_value.data();
  a.cos = rows > 0 ? cos.data() : nullptr;
  a.sin = rows > 0 ? sin.data() : nullptr;
  a.seqlens_k = seqlens.data();
  a.output = output.data();
  a.present_key = present_key.data();
  a.present_value = present_value.data();
  const attn::Plan plan = attn::plan(a, attn::path(cap, hd), longest);
  std::vector<float> parts(static_cast<size_t>(plan.items * plan.part_floats));
  for (int64_t i = 0; i < plan.items; ++i) attn::run_item(a, plan, i, parts.data());
  attn::merge(a, plan, parts.data());
  write(out, {&output, &present_key, &present_value});
  std::printf("op=attention isa=%s ranges=%lld\n", mvgpt::kIsaNames[plan.path.isa],
              static_cast<long long>(plan.ranges));
}

void run_vector(Reader& in, const char* out, Isa isa) {
  const int64_t n = in.i64("n");
  if (n % 16 != 0) {
    throw BadCase("vector case: expected n a multiple of 16, got " + std::to_string(n));
  }
  const auto x = in.array<float>(n, "x"), y = in.array<float>(n, "y");
  in.expect_end();
  std::vector<float> exp2_out(static_cast<size_t>(n)), max_out(static_cast<size_t>(n));
  mvgpt::vec::path(isa)(x.data(), y.data(), n, exp2_out.data(), max_out.data());
  write(out, {&exp2_out, &max_out});
  std::printf("op=vector isa=%s\n", mvgpt::kIsaNames[isa]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s CASE OUT [scalar|neon|avx2|avx512]\n", argv[0]);
    return 2;
  }
  Isa isa = mvgpt::kScalar;
  std::string error;
  if (!mvgpt::parse_isa("isa", argc == 4 ? argv[3] : nullptr, &isa, &error)) {
    std::fprintf(stderr, "kernel_check: %s\n", error.c_str());
    return 2;
  }
  try {
    Reader in(argv[1]);
    const std::string tag = in.tag();
    if (tag == "MVGSCAN1") {
      run_scan(in, argv[2], isa);
    } else if (tag == "MVGATTN1") {
      run_attention(in, argv[2], isa);
    } else if (tag == "MVGVECT1") {
      run_vector(in, argv[2], isa);
    } else {
      throw BadCase(std::string(argv[1]) + ": expected the tag MVGSCAN1, MVGATTN1 or MVGVECT1, " +
                    "got '" + tag + "'");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
