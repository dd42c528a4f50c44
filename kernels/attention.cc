// mvgpt::GroupQueryAttention: com.microsoft.GroupQueryAttention's inputs, outputs and attributes,
// with its own kernel for the one-position (decode) step on CPU.
//
// Why: onnxruntime's CPU GQA runs each query head on its own, so at one new position every key and
// value row of a kv head is read once per query head (7 times at Qwen2.5-0.5B) through
// GEMV-shaped GEMMs. This kernel reads each row once for all the heads of a group (see
// attention_impl.h), and splits a long cache into ranges (at least kMinRangeKeys positions each)
// that run on onnxruntime's thread pool and are merged as partial softmaxes, so that more
// threads than kv heads have work. Measured, 24 layers' caches at 2450 positions (60 MB, one
// decode step, benchmarks/bench_attention.py): 16-core Xeon, threads 1/2/4/8: 6.8/2.0/1.2/1.0 ms
// against onnxruntime's 19.0/8.2/5.0/4.1 ms (one range per kv head: 5.3/1.9/2.5/2.2 ms).
// Every other call - several positions (a prefill chunk), interleaved or
// partial rotary, softcap, a local window, no past - is handed to onnxruntime's
// own GroupQueryAttention kernel (OrtApi::CreateOp / InvokeOp) with the same inputs and the
// outputs this op allocated, so a cache bound as both past and present stays written in place.
//
// Inputs (as com.microsoft): query (B,S,nh*hd), key (B,S,kvh*hd), value (B,S,kvh*hd) - or query
// (B,S,(nh+2*kvh)*hd) holding q, k and v packed, key and value absent -
// past_key (B,kvh,P,hd), past_value, seqlens_k (B) int32 = positions in use - 1,
// total_sequence_length (1) int32, cos_cache and sin_cache (max_pos, hd/2).
// Outputs: output (B,S,nh*hd), present_key and present_value (B,kvh,max(P,total),hd).
// Attributes: num_heads, kv_num_heads, scale (0: 1/sqrt(hd)), do_rotary, rotary_interleaved,
// local_window_size, softcap.

#include "common.h"  // onnxruntime's C++ API (manual init), MVGPT_X86, shared helpers

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ops.h"

namespace mvgpt {
namespace {

struct AttnArgs {
  int64_t batch, num_heads, kv_heads, head_dim, past_len, present_len;
  int64_t q_stride, kv_stride;  // floats from one batch row of query (key, value) to the next
  float scale;
  const float *query, *key, *value, *past_key, *past_value, *cos, *sin;
  const int32_t* seqlens_k;
  float *output, *present_key, *present_value;
};

#define MVGPT_SIMD_IMPL "attention_impl.h"
#include "simd.h"  // namespaces scalar, avx2, avx512: V + attend_part

struct Isa {
  void (*attend)(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*, float*);
  int64_t (*scratch)(const AttnArgs&, int64_t);
};

// Cached positions per range: a (batch row, kv head) whose cache is longer is split into up to
// kMaxRanges ranges run in parallel and merged, so that more threads than kv heads have work.
constexpr int64_t kMinRangeKeys = 512;
constexpr int64_t kMaxRanges = 16;

// the widest instruction set whose width divides head_dim; want: "" or scalar | avx2 | avx512
// (MVGPT_ATTENTION_ISA, read when a session creates the kernel; for tests)
Isa pick_isa(int64_t head_dim, const std::string& w) {
  const Isa scalar_isa{scalar::attend_part, scalar::scratch_floats};
#if MVGPT_X86
  const Isa avx2_isa{avx2::attend_part, avx2::scratch_floats};
  const Isa avx512_isa{avx512::attend_part, avx512::scratch_floats};
  const bool has_avx2 = cpu_features().avx2, has_avx512 = cpu_features().avx512;
  if (w == "scalar") return scalar_isa;
  if (has_avx512 && head_dim % 16 == 0 && (w.empty() || w == "avx512")) return avx512_isa;
  if (has_avx2 && head_dim % 8 == 0) return avx2_isa;
#else
  (void)head_dim;
  (void)w;
#endif
  return scalar_isa;
}

[[noreturn]] void fail(const std::string& what) {
  throw Ort::Exception("mvgpt::GroupQueryAttention: " + what, ORT_INVALID_ARGUMENT);
}

float attr_float(const OrtApi& api, const OrtKernelInfo* info, const char* name, float dflt) {
  float v = dflt;
  if (OrtStatus* st = api.KernelInfoGetAttribute_float(info, name, &v)) {
    api.ReleaseStatus(st);
    return dflt;
  }
  return v;
}

void check(const OrtApi& api, OrtStatus* st) {
  if (st == nullptr) return;
  const std::string msg = api.GetErrorMessage(st);
  const OrtErrorCode code = api.GetErrorCode(st);
  api.ReleaseStatus(st);
  throw Ort::Exception("mvgpt::GroupQueryAttention: " + msg, code);
}

constexpr int kInputs = 9;  // the inputs this op declares (com.microsoft's first nine)

struct GqaKernel {
  GqaKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
    const char* want = std::getenv("MVGPT_ATTENTION_ISA");
    isa_want_ = want != nullptr ? want : "";
    num_heads_ = attr_int(api, info, "num_heads", 0);
    kv_heads_ = attr_int(api, info, "kv_num_heads", 0);
    if (num_heads_ <= 0 || kv_heads_ <= 0 || num_heads_ % kv_heads_ != 0) {
      fail("attributes num_heads and kv_num_heads must be positive with num_heads a multiple of "
           "kv_num_heads, got " + std::to_string(num_heads_) + " and " + std::to_string(kv_heads_));
    }
    scale_ = attr_float(api, info, "scale", 0.0f);
    do_rotary_ = attr_int(api, info, "do_rotary", 0);
    interleaved_ = attr_int(api, info, "rotary_interleaved", 0);
    window_ = attr_int(api, info, "local_window_size", -1);
    softcap_ = attr_float(api, info, "softcap", 0.0f);
    own_decode_ = interleaved_ == 0 && window_ == -1 && softcap_ == 0.0f;

    // onnxruntime's kernel for everything else, with the same attributes
    std::vector<OrtOpAttr*> attrs;
    auto add = [&](const char* name, const void* data, OrtOpAttrType type) {
      OrtOpAttr* a = nullptr;
      check(api, api.CreateOpAttr(name, data, 1, type, &a));
      attrs.push_back(a);
    };
    add("num_heads", &num_heads_, ORT_OP_ATTR_INT);
    add("kv_num_heads", &kv_heads_, ORT_OP_ATTR_INT);
    add("scale", &scale_, ORT_OP_ATTR_FLOAT);
    add("do_rotary", &do_rotary_, ORT_OP_ATTR_INT);
    add("rotary_interleaved", &interleaved_, ORT_OP_ATTR_INT);
    add("local_window_size", &window_, ORT_OP_ATTR_INT);
    add("softcap", &softcap_, ORT_OP_ATTR_FLOAT);
    size_t inputs = 0;
    check(api, api.KernelInfo_GetInputCount(info, &inputs));
    inputs_ = static_cast<int>(inputs);
    const char* names[] = {"T", "M"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    OrtStatus* st = api.CreateOp(info, "GroupQueryAttention", "com.microsoft", 1, names, types, 2,
                                 attrs.data(), static_cast<int>(attrs.size()), inputs_, 3, &ort_op_);
    for (OrtOpAttr* a : attrs) api.ReleaseOpAttr(a);
    check(api, st);
  }

  ~GqaKernel() {
    if (ort_op_ != nullptr) api_.ReleaseOp(ort_op_);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
    } catch (const Ort::Exception& e) {
      return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return api_.CreateStatus(ORT_FAIL, (std::string("mvgpt::GroupQueryAttention: ") + e.what()).c_str());
    }
    return nullptr;
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue in[kInputs]{};
    std::vector<int64_t> shape[kInputs];
    const size_t count = std::min<size_t>(ctx.GetInputCount(), kInputs);
    for (size_t i = 0; i < count; ++i) {
      in[i] = ctx.GetInput(i);
      if (in[i]) shape[i] = in[i].GetTensorTypeAndShapeInfo().GetShape();
    }
    if (!in[0] || shape[0].size() != 3) fail("input 'query' must be 3-D (batch, sequence, hidden)");
    const int64_t batch = shape[0][0], seq = shape[0][1];
    const bool packed = !in[1];
    const int64_t width = packed ? num_heads_ + 2 * kv_heads_ : num_heads_;
    if (shape[0][2] % width != 0) {
      fail("query width " + std::to_string(shape[0][2]) + " is not a multiple of " +
           std::to_string(width) + " heads");
    }
    const int64_t hd = shape[0][2] / width;
    const bool has_past = in[3] && in[4];
    if (has_past && (shape[3].size() != 4 || shape[3] != shape[4] || shape[3][0] != batch ||
                     shape[3][1] != kv_heads_ || shape[3][3] != hd)) {
      fail("past_key and past_value must both be (batch, kv_num_heads, length, head_dim) = (" +
           std::to_string(batch) + ", " + std::to_string(kv_heads_) + ", length, " +
           std::to_string(hd) + "), got " + shape_str(shape[3]) + " and " + shape_str(shape[4]));
    }
    if (!in[5] || !in[6]) fail("inputs 'seqlens_k' and 'total_sequence_length' are required");
    const int64_t past_len = has_past ? shape[3][2] : 0;
    const int64_t total = in[6].GetTensorData<int32_t>()[0];
    const int64_t present_len = std::max(past_len, total);

    Ort::UnownedValue out = ctx.GetOutput(0, {batch, seq, num_heads_ * hd});
    Ort::UnownedValue pk = ctx.GetOutput(1, {batch, kv_heads_, present_len, hd});
    Ort::UnownedValue pv = ctx.GetOutput(2, {batch, kv_heads_, present_len, hd});

    const bool rotary_ok = do_rotary_ == 0 || (in[7] && in[8] && shape[7].size() == 2 &&
                                                shape[7] == shape[8] && shape[7][1] * 2 == hd);
    if (seq != 1 || !has_past || !own_decode_ || !rotary_ok || (!packed && !in[2])) {
      const OrtValue* inputs[kInputs];
      for (int i = 0; i < kInputs; ++i) inputs[i] = in[i];
      OrtValue* outputs[3] = {out, pk, pv};
      check(api_, api_.InvokeOp(context, ort_op_, inputs, std::min<int>(inputs_, kInputs), outputs, 3));
      return;
    }
    if (!packed && (shape[1] != std::vector<int64_t>{batch, 1, kv_heads_ * hd} || shape[2] != shape[1])) {
      fail("key and value must be (batch, 1, kv_num_heads * head_dim) = " +
           shape_str({batch, 1, kv_heads_ * hd}) + ", got " + shape_str(shape[1]) + " and " +
           shape_str(shape[2]));
    }
    if (shape[5] != std::vector<int64_t>{batch}) {
      fail("seqlens_k must be (batch,) = " + shape_str({batch}) + ", got " + shape_str(shape[5]));
    }
    const int32_t* seqlens = in[5].GetTensorData<int32_t>();
    const int64_t max_pos = do_rotary_ ? shape[7][0] : INT64_MAX;
    int64_t longest = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t pos = seqlens[b];
      if (pos < 0 || pos >= present_len || pos >= max_pos || pos >= total) {
        fail("seqlens_k[" + std::to_string(b) + "] = " + std::to_string(pos) +
             " is outside the cache: expected 0 <= seqlens_k < min(total_sequence_length " +
             std::to_string(total) + ", cache length " + std::to_string(present_len) +
             (do_rotary_ ? ", rotary table rows " + std::to_string(max_pos) : std::string()) + ")");
      }
      longest = std::max(longest, pos + 1);
    }
    const float* q = in[0].GetTensorData<float>();
    AttnArgs a{batch, num_heads_, kv_heads_, hd, past_len, present_len,
               shape[0][2], packed ? shape[0][2] : kv_heads_ * hd,
               scale_ != 0.0f ? scale_ : 1.0f / std::sqrt(static_cast<float>(hd)), q,
               packed ? q + num_heads_ * hd : in[1].GetTensorData<float>(),
               packed ? q + (num_heads_ + kv_heads_) * hd : in[2].GetTensorData<float>(),
               in[3].GetTensorData<float>(),
               in[4].GetTensorData<float>(),
               do_rotary_ ? in[7].GetTensorData<float>() : nullptr,
               do_rotary_ ? in[8].GetTensorData<float>() : nullptr, seqlens,
               out.GetTensorMutableData<float>(), pk.GetTensorMutableData<float>(),
               pv.GetTensorMutableData<float>()};
    const bool in_place = a.past_key == a.present_key;
    if (in_place != (a.past_value == a.present_value)) {
      fail("past_key and past_value must both share their buffer with present_key and "
           "present_value, or neither");
    }
    for (int64_t b = 0; b < batch && !in_place; ++b) {
      if (seqlens[b] > past_len) {
        fail("seqlens_k[" + std::to_string(b) + "] = " + std::to_string(seqlens[b]) +
             " needs that many past positions, but past_key holds " + std::to_string(past_len));
      }
    }
    const Isa isa = pick_isa(hd, isa_want_);
    const int64_t ranges = std::max<int64_t>(1, std::min(kMaxRanges, longest / kMinRangeKeys));
    const int64_t r = num_heads_ / kv_heads_, part_floats = r * (hd + 2);
    std::vector<float> parts(static_cast<size_t>(batch * kv_heads_ * ranges * part_floats));
    struct Job {
      const AttnArgs* a;
      const Isa* isa;
      int64_t ranges, part_floats, scratch;
      float* parts;
    } job{&a, &isa, ranges, part_floats, isa.scratch(a, (longest + ranges - 1) / ranges), parts.data()};
    auto run = [](void* data, size_t item) {
      const Job& j = *static_cast<const Job*>(data);
      const int64_t i = static_cast<int64_t>(item);
      const int64_t range = i % j.ranges, bg = i / j.ranges;
      const int64_t b = bg / j.a->kv_heads, g = bg % j.a->kv_heads;
      const int64_t T = j.a->seqlens_k[b] + 1, span = (T + j.ranges - 1) / j.ranges;
      const int64_t t0 = std::min(T, range * span), t1 = std::min(T, t0 + span);
      float* part = j.parts + i * j.part_floats;
      if (t0 == t1) {  // a short row: nothing in this range
        for (int64_t h = 0; h < j.part_floats; h += j.a->head_dim + 2) {
          part[h + j.a->head_dim] = -INFINITY;
          part[h + j.a->head_dim + 1] = 0.0f;
        }
        return;
      }
      j.isa->attend(*j.a, b, g, t0, t1, thread_scratch(j.scratch), part);
    };
    ctx.ParallelFor(run, static_cast<size_t>(batch * kv_heads_ * ranges), 0, &job);
    // merge the ranges: out = sum_i 2^(m_i - M) o_i / sum_i 2^(m_i - M) l_i, M = max_i m_i
    for (int64_t bg = 0; bg < batch * kv_heads_; ++bg) {
      const int64_t b = bg / kv_heads_, g = bg % kv_heads_;
      for (int64_t j = 0; j < r; ++j) {
        const float* first = parts.data() + (bg * ranges * r + j) * (hd + 2);
        float m = -INFINITY;
        for (int64_t i = 0; i < ranges; ++i) m = std::max(m, first[i * part_floats + hd]);
        float* out = a.output + (b * num_heads_ + g * r + j) * hd;
        std::fill(out, out + hd, 0.0f);
        float total = 0.0f;
        for (int64_t i = 0; i < ranges; ++i) {
          const float* p = first + i * part_floats;
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

  const OrtApi& api_;
  int64_t num_heads_ = 0, kv_heads_ = 0, do_rotary_ = 0, interleaved_ = 0, window_ = -1;
  float scale_ = 0.0f, softcap_ = 0.0f;
  bool own_decode_ = false;
  int inputs_ = 0;
  OrtOp* ort_op_ = nullptr;
  std::string isa_want_;
};

struct GqaOp : Ort::CustomOpBase<GqaOp, GqaKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new GqaKernel(api, info);
    } catch (const Ort::Exception& e) {
      return api.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_FAIL, e.what());
    }
    return nullptr;
  }
  const char* GetName() const { return "GroupQueryAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 5 || index == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                                    : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 0 || index == 5 || index == 6 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

const OrtCustomOp* group_query_attention_op() {
  static GqaOp op;
  return &op;
}

}  // namespace mvgpt
