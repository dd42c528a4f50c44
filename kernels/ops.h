// The ops of libmvgpt_ops.so, for library.cc, which registers them in the "mvgpt" domain and
// reports which instruction set each op last ran (mvgpt_ops_isa).
#pragma once

struct OrtCustomOp;

namespace mvgpt {

const OrtCustomOp* selective_scan_op();         // selective_scan.cc
#if defined(MVGPT_CUDA)
const OrtCustomOp* selective_scan_cuda_op();    // selective_scan.cc, kernel in selective_scan_cuda.cu
#endif
const OrtCustomOp* group_query_attention_op();  // attention.cc

enum class Op { kSelectiveScan, kGroupQueryAttention };

// Records the path a run of `op` took: a name of kIsaNames, or "onnxruntime" (a
// GroupQueryAttention call handed to onnxruntime's kernel). `path` must be a string literal.
void note_path(Op op, const char* path);

}  // namespace mvgpt
