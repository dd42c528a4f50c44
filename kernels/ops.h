// The ops of libmvgpt_ops.so besides SelectiveScan (selective_scan.cc registers the "mvgpt"
// domain and adds every op listed here).
#pragma once

struct OrtCustomOp;

namespace mvgpt {
const OrtCustomOp* group_query_attention_op();  // attention.cc
}  // namespace mvgpt
