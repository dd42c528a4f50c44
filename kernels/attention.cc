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
//
// Instruction set: the widest this CPU has whose width divides head_dim (attention_kernel.h),
// chosen per call since head_dim comes with the query; MVGPT_ATTENTION_ISA caps it (one this CPU
// lacks, or an unknown name, is an error when the session creates the kernel). library.cc's
// mvgpt_ops_isa("GroupQueryAttention") says which path the last call took.

#include "common.h"  // onnxruntime's C++ API (manual init), cpu.h, shared helpers

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention_kernel.h"
#include "ops.h"

namespace mvgpt {
namespace {

using attn::AttnArgs;

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
    std::string error;
    if (!parse_isa("MVGPT_ATTENTION_ISA", std::getenv("MVGPT_ATTENTION_ISA"), &isa_cap_, &error)) {
      fail(error);
    }
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
      note_path(Op::kGroupQueryAttention, "onnxruntime");
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
    const attn::Plan plan = attn::plan(a, attn::path(isa_cap_, hd), longest);
    std::vector<float> parts(static_cast<size_t>(plan.items * plan.part_floats));
    struct Job {
      const AttnArgs* a;
      const attn::Plan* plan;
      float* parts;
    } job{&a, &plan, parts.data()};
    auto run = [](void* data, size_t item) {
      const Job& j = *static_cast<const Job*>(data);
      attn::run_item(*j.a, *j.plan, static_cast<int64_t>(item), j.parts);
    };
    note_path(Op::kGroupQueryAttention, kIsaNames[plan.path.isa]);
    ctx.ParallelFor(run, static_cast<size_t>(plan.items), 0, &job);
    attn::merge(a, plan, parts.data());
  }

  const OrtApi& api_;
  int64_t num_heads_ = 0, kv_heads_ = 0, do_rotary_ = 0, interleaved_ = 0, window_ = -1;
  float scale_ = 0.0f, softcap_ = 0.0f;
  bool own_decode_ = false;
  int inputs_ = 0;
  OrtOp* ort_op_ = nullptr;
  Isa isa_cap_ = kScalar;
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
