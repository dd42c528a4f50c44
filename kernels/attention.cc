// mvgpt::GroupQueryAttention: com.microsoft.GroupQueryAttention's inputs, outputs and attributes,
// with its own kernel for the one-position (decode) step on CPU.
//
// Why: onnxruntime's CPU GQA runs each query head on its own, so at one new position every key and
// value row of a kv head is read once per query head (7 times at Qwen2.5-0.5B) through
// GEMV-shaped GEMMs. This kernel reads each row once for all the heads of a group (see
// attention_impl.h), and splits a long cache into ranges (at least kMinRangeKeys positions each)
// that run on onnxruntime's thread pool and are merged as partial softmaxes, so that more
// threads than kv heads have work (benchmarks/bench_attention.py times it against onnxruntime's
// kernel; the README's results are the record). Every other call - several positions (a prefill chunk), interleaved or
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
#include <initializer_list>
#include <string>
#include <vector>

#include "attention_kernel.h"
#include "ops.h"

namespace mvgpt {
namespace {

using attn::AttnArgs;

constexpr const char* kOp = "GroupQueryAttention";

// The inputs this op declares: com.microsoft's first nine.
namespace input {
enum : int {
  kQuery,
  kKey,
  kValue,
  kPastKey,
  kPastValue,
  kSeqlensK,
  kTotalLength,
  kCosCache,
  kSinCache,
  kCount
};
}  // namespace input

// A call's inputs (absent optional ones: empty values and shapes).
struct Inputs {
  Ort::ConstValue value[input::kCount]{};
  std::vector<int64_t> shape[input::kCount];

  bool has(int i) const { return static_cast<bool>(value[i]); }
  template <typename T>
  const T* data(int i) const {
    return value[i].GetTensorData<T>();
  }
};

// What the query and the past say about a call.
struct Dims {
  int64_t batch, seq, head_dim, past_len, total, present_len;
  bool packed, has_past;
};

struct GqaKernel {
  GqaKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
    std::string error;
    if (!parse_isa("MVGPT_ATTENTION_ISA", std::getenv("MVGPT_ATTENTION_ISA"), &isa_cap_, &error)) {
      fail(kOp, error);
    }
    num_heads_ = attr_int(api, info, kOp, "num_heads", 0);
    kv_heads_ = attr_int(api, info, kOp, "kv_num_heads", 0);
    if (num_heads_ <= 0 || kv_heads_ <= 0 || num_heads_ % kv_heads_ != 0) {
      fail(kOp, "attributes num_heads and kv_num_heads must be positive with num_heads a multiple "
                "of kv_num_heads, got " + std::to_string(num_heads_) + " and " +
                std::to_string(kv_heads_));
    }
    scale_ = attr_float(api, info, kOp, "scale", 0.0f);
    do_rotary_ = attr_int(api, info, kOp, "do_rotary", 0);
    interleaved_ = attr_int(api, info, kOp, "rotary_interleaved", 0);
    window_ = attr_int(api, info, kOp, "local_window_size", -1);
    softcap_ = attr_float(api, info, kOp, "softcap", 0.0f);
    own_decode_ = interleaved_ == 0 && window_ == -1 && softcap_ == 0.0f;
    size_t inputs = 0;
    check(api, kOp, api.KernelInfo_GetInputCount(info, &inputs));
    inputs_ = static_cast<int>(inputs);
    create_onnxruntime_op(info);
  }

  ~GqaKernel() {
    if (ort_op_ != nullptr) api_.ReleaseOp(ort_op_);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return to_status(api_, kOp, [&] { Compute(context); });
  }

  // A decode step through the own kernel; anything else through onnxruntime's.
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Inputs in = read_inputs(ctx);
    const Dims d = dims(in);
    Ort::UnownedValue out = ctx.GetOutput(0, {d.batch, d.seq, num_heads_ * d.head_dim});
    Ort::UnownedValue pk = ctx.GetOutput(1, {d.batch, kv_heads_, d.present_len, d.head_dim});
    Ort::UnownedValue pv = ctx.GetOutput(2, {d.batch, kv_heads_, d.present_len, d.head_dim});
    if (!own_kernel_runs(in, d)) {
      run_onnxruntime(context, in, {out, pk, pv});
      return;
    }
    check_decode_shapes(in, d);
    const int64_t longest = longest_row(in, d);
    run_ranges(ctx, decode_args(in, d, out, pk, pv), longest);
  }

 private:
  // onnxruntime's own GroupQueryAttention with this node's attributes, for the calls the own
  // kernel does not take.
  void create_onnxruntime_op(const OrtKernelInfo* info) {
    std::vector<OrtOpAttr*> attrs;
    auto add = [&](const char* name, const void* data, OrtOpAttrType type) {
      OrtOpAttr* a = nullptr;
      check(api_, kOp, api_.CreateOpAttr(name, data, 1, type, &a));
      attrs.push_back(a);
    };
    add("num_heads", &num_heads_, ORT_OP_ATTR_INT);
    add("kv_num_heads", &kv_heads_, ORT_OP_ATTR_INT);
    add("scale", &scale_, ORT_OP_ATTR_FLOAT);
    add("do_rotary", &do_rotary_, ORT_OP_ATTR_INT);
    add("rotary_interleaved", &interleaved_, ORT_OP_ATTR_INT);
    add("local_window_size", &window_, ORT_OP_ATTR_INT);
    add("softcap", &softcap_, ORT_OP_ATTR_FLOAT);
    const char* names[] = {"T", "M"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    OrtStatus* st = api_.CreateOp(info, kOp, "com.microsoft", 1, names, types, 2, attrs.data(),
                                  static_cast<int>(attrs.size()), inputs_, 3, &ort_op_);
    for (OrtOpAttr* a : attrs) api_.ReleaseOpAttr(a);
    check(api_, kOp, st);
  }

  static Inputs read_inputs(Ort::KernelContext& ctx) {
    Inputs in;
    const size_t count = std::min<size_t>(ctx.GetInputCount(), input::kCount);
    for (size_t i = 0; i < count; ++i) {
      in.value[i] = ctx.GetInput(i);
      if (in.value[i]) in.shape[i] = in.value[i].GetTensorTypeAndShapeInfo().GetShape();
    }
    return in;
  }

  // The call's sizes, from the query and the past; checks what every path needs.
  Dims dims(const Inputs& in) const {
    using namespace input;
    if (!in.has(kQuery) || in.shape[kQuery].size() != 3) {
      fail(kOp, "input 'query' must be 3-D (batch, sequence, hidden)");
    }
    const std::vector<int64_t>& q = in.shape[kQuery];
    Dims d{};
    d.batch = q[0];
    d.seq = q[1];
    d.packed = !in.has(kKey);
    const int64_t width = d.packed ? num_heads_ + 2 * kv_heads_ : num_heads_;
    if (q[2] % width != 0) {
      fail(kOp, "query width " + std::to_string(q[2]) + " is not a multiple of " +
                    std::to_string(width) + " heads");
    }
    d.head_dim = q[2] / width;
    d.has_past = in.has(kPastKey) && in.has(kPastValue);
    const std::vector<int64_t>& past = in.shape[kPastKey];
    if (d.has_past && (past.size() != 4 || past != in.shape[kPastValue] || past[0] != d.batch ||
                       past[1] != kv_heads_ || past[3] != d.head_dim)) {
      fail(kOp, "past_key and past_value must both be (batch, kv_num_heads, length, head_dim) = (" +
                    std::to_string(d.batch) + ", " + std::to_string(kv_heads_) + ", length, " +
                    std::to_string(d.head_dim) + "), got " + shape_str(past) + " and " +
                    shape_str(in.shape[kPastValue]));
    }
    if (!in.has(kSeqlensK) || !in.has(kTotalLength)) {
      fail(kOp, "inputs 'seqlens_k' and 'total_sequence_length' are required");
    }
    d.past_len = d.has_past ? past[2] : 0;
    d.total = in.data<int32_t>(kTotalLength)[0];
    d.present_len = std::max(d.past_len, d.total);
    return d;
  }

  // The own kernel takes one new position after a past, with the options it implements.
  bool own_kernel_runs(const Inputs& in, const Dims& d) const {
    using namespace input;
    const std::vector<int64_t>& cos = in.shape[kCosCache];
    const bool rotary_ok = do_rotary_ == 0 || (in.has(kCosCache) && in.has(kSinCache) &&
                                               cos.size() == 2 && cos == in.shape[kSinCache] &&
                                               cos[1] * 2 == d.head_dim);
    return d.seq == 1 && d.has_past && own_decode_ && rotary_ok && (d.packed || in.has(kValue));
  }

  // onnxruntime's kernel on the same inputs, writing the outputs this op allocated (a cache bound
  // as both past and present stays written in place).
  void run_onnxruntime(OrtKernelContext* context, const Inputs& in,
                       std::initializer_list<OrtValue*> outputs) const {
    const OrtValue* inputs[input::kCount];
    for (int i = 0; i < input::kCount; ++i) inputs[i] = in.value[i];
    note_path(Op::kGroupQueryAttention, "onnxruntime");
    check(api_, kOp,
          api_.InvokeOp(context, ort_op_, inputs, std::min<int>(inputs_, input::kCount),
                        outputs.begin(), static_cast<int>(outputs.size())));
  }

  // Positions in use of the longest batch row (max seqlens_k + 1), each row's checked.
  int64_t longest_row(const Inputs& in, const Dims& d) const {
    using namespace input;
    const int32_t* seqlens = in.data<int32_t>(kSeqlensK);
    const int64_t max_pos = do_rotary_ ? in.shape[kCosCache][0] : INT64_MAX;
    int64_t longest = 0;
    for (int64_t b = 0; b < d.batch; ++b) {
      const int64_t pos = seqlens[b];
      if (pos < 0 || pos >= d.present_len || pos >= max_pos || pos >= d.total) {
        fail(kOp, "seqlens_k[" + std::to_string(b) + "] = " + std::to_string(pos) +
                      " is outside the cache: expected 0 <= seqlens_k < min(total_sequence_length " +
                      std::to_string(d.total) + ", cache length " +
                      std::to_string(d.present_len) +
                      (do_rotary_ ? ", rotary table rows " + std::to_string(max_pos)
                                  : std::string()) +
                      ")");
      }
      longest = std::max(longest, pos + 1);
    }
    return longest;
  }

  // The shapes only the own kernel reads: key and value apart from the query, seqlens_k.
  void check_decode_shapes(const Inputs& in, const Dims& d) const {
    using namespace input;
    const std::vector<int64_t> kv_shape{d.batch, 1, kv_heads_ * d.head_dim};
    if (!d.packed && (in.shape[kKey] != kv_shape || in.shape[kValue] != kv_shape)) {
      fail(kOp, "key and value must be (batch, 1, kv_num_heads * head_dim) = " +
                    shape_str(kv_shape) + ", got " + shape_str(in.shape[kKey]) + " and " +
                    shape_str(in.shape[kValue]));
    }
    if (in.shape[kSeqlensK] != std::vector<int64_t>{d.batch}) {
      fail(kOp, "seqlens_k must be (batch,) = " + shape_str({d.batch}) + ", got " +
                    shape_str(in.shape[kSeqlensK]));
    }
  }

  // The own kernel's arguments for a decode step: q, k and v (packed or apart), the caches, the
  // rotary tables and the outputs; checks that the caches are written in place, or read whole.
  AttnArgs decode_args(const Inputs& in, const Dims& d, Ort::UnownedValue& out,
                       Ort::UnownedValue& pk, Ort::UnownedValue& pv) const {
    using namespace input;
    const int64_t hd = d.head_dim;
    const float* q = in.data<float>(kQuery);
    const int64_t q_stride = in.shape[kQuery][2];
    AttnArgs a{d.batch,
               num_heads_,
               kv_heads_,
               hd,
               d.past_len,
               d.present_len,
               q_stride,
               d.packed ? q_stride : kv_heads_ * hd,
               scale_ != 0.0f ? scale_ : 1.0f / std::sqrt(static_cast<float>(hd)),
               q,
               d.packed ? q + num_heads_ * hd : in.data<float>(kKey),
               d.packed ? q + (num_heads_ + kv_heads_) * hd : in.data<float>(kValue),
               in.data<float>(kPastKey),
               in.data<float>(kPastValue),
               do_rotary_ ? in.data<float>(kCosCache) : nullptr,
               do_rotary_ ? in.data<float>(kSinCache) : nullptr,
               in.data<int32_t>(kSeqlensK),
               out.GetTensorMutableData<float>(),
               pk.GetTensorMutableData<float>(),
               pv.GetTensorMutableData<float>()};
    const bool in_place = a.past_key == a.present_key;
    if (in_place != (a.past_value == a.present_value)) {
      fail(kOp, "past_key and past_value must both share their buffer with present_key and "
                "present_value, or neither");
    }
    for (int64_t b = 0; b < d.batch && !in_place; ++b) {
      if (a.seqlens_k[b] > d.past_len) {
        fail(kOp, "seqlens_k[" + std::to_string(b) + "] = " + std::to_string(a.seqlens_k[b]) +
                      " needs that many past positions, but past_key holds " +
                      std::to_string(d.past_len));
      }
    }
    return a;
  }

  // The decode step: (batch row, kv head, range of the cache) items on onnxruntime's thread pool,
  // then the ranges merged into the output (attention_kernel.h).
  void run_ranges(Ort::KernelContext& ctx, const AttnArgs& a, int64_t longest) const {
    const attn::Plan plan = attn::plan(a, attn::path(isa_cap_, a.head_dim), longest);
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
    return to_status(api, kOp, [&] { *kernel = new GqaKernel(api, info); });
  }
  const char* GetName() const { return kOp; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return input::kCount; }
  static bool is_int32(size_t index) {
    return index == input::kSeqlensK || index == input::kTotalLength;
  }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return is_int32(index) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                           : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == input::kQuery || is_int32(index) ? INPUT_OUTPUT_REQUIRED
                                                     : INPUT_OUTPUT_OPTIONAL;
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
