"""fp16 graphs for GPU packages (``mvgpt-export --precision fp16``, issue 15).

Each stage's fp32 graph becomes an fp16 graph by onnxruntime's own converter
(``onnxruntime.transformers.float16``): weights and activations in fp16, with these exceptions:

- Graph inputs and outputs stay fp32, so the runtimes' glue and the next stage see what they see
  in every other package, except the decoder's KV cache (past/present roles): fp16, half the bytes
  the cache keeps on the device.
- Normalisations stay fp32 (every node of a module whose name says norm: RMSNorm's
  Pow -> ReduceMean -> Add -> Sqrt -> Div, LayerNorm): the square of a hidden value overflows
  fp16 (65504) once the value passes 256, which the outlier activations of large language models
  can (random test weights never do, so no test here would show it).
- ``mvgpt::SelectiveScan`` stays fp32 (casts around it): its CPU and CUDA kernels take fp32.
- The decoder is made from its portable form first: com.microsoft.GroupQueryAttention has fp16
  kernels (CUDA and CPU), the mvgpt attention op has an fp32 CPU kernel only. An fp16 decoder
  therefore needs no custom op and has no portable twin (the manifest says so).

Whether a stage keeps its fp16 graph is measured, not assumed: quantize_package checks it against
the fp32 graph and keeps the fp32 graph where the cosine is below ``FP16_MIN_COSINE`` (the
manifest's quantization entry records which and why).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx.shape_inference

from mvgpt.exporter.graphs import save_model
from mvgpt.runtime import manifest as M

FP16 = "fp16_weights_activations"
FP16_MIN_COSINE = 0.999  # per stage, against the fp32 graph on the same inputs
FP32_OPS = [M.CUSTOM_OP_SCAN]  # op types kept fp32 (casts around them)


def _norm_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes of normalisation modules (``.../input_layernorm/Pow``, ``/norm/Div``,
    ``/clip/pre_layrnorm/...``): a path segment before the node's own name mentions norm."""
    names = []
    for node in graph.node:
        scope = node.name.rsplit("/", 1)[0].lower()
        if any("norm" in part for part in scope.split("/")):
            names.append(node.name)
    return names


def fp16_io_names(model: onnx.ModelProto, stage: str) -> list[str]:
    """The graph inputs and outputs an fp16 graph of ``stage`` has in fp16: the decoder's KV cache
    (its past_key_values.* / present.* tensors); none elsewhere."""
    if stage != M.DECODER:
        return []
    names = [t.name for t in (*model.graph.input, *model.graph.output)]
    return [n for n in names if n.startswith(("past_key_values.", "present."))]


def convert_fp16(src: Path, dst: Path, stage: str) -> None:
    """Write the fp16 graph of ``stage`` (the fp32 graph at ``src``) to ``dst`` (see the module
    docstring for what stays fp32). Shapes are inferred from the files (``infer_shapes_path``),
    not from the model in memory, which protobuf cannot serialise past 2 GB (a 1.5B decoder)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from mvgpt.kernels.portable import make_portable

    with tempfile.TemporaryDirectory(prefix="mvgpt-fp16-", dir=dst.parent) as tmp:
        source = Path(tmp) / src.name
        model = onnx.load(str(src))
        if stage == M.DECODER:
            model = make_portable(model)
        save_model(model, source)  # the portable form beside its own data, for shape inference
        del model
        inferred = Path(tmp) / f"inferred-{src.name}"
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        model = onnx.load(str(inferred))  # its weights: the data file beside it
        cache = set(fp16_io_names(model, stage))
        keep = [t.name for t in (*model.graph.input, *model.graph.output) if t.name not in cache]
        half = convert_float_to_float16(
            model,
            keep_io_types=keep,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
            node_block_list=_norm_nodes(model.graph),
            disable_shape_infer=True,  # done above, from the files
        )
        save_model(half, dst)


def manifest_tensors(entry: dict, stage: str) -> dict:
    """A stage's manifest entry for its fp16 graph: the KV cache's tensors say float16; the
    decoder has no custom op and no portable graph."""
    if stage != M.DECODER:
        return entry
    entry = dict(entry)
    cache_roles = (*M.CACHE_INPUT_ROLES, *M.CACHE_OUTPUT_ROLES)
    for key in (M.S_INPUTS, M.S_OUTPUTS):
        entry[key] = [
            {**t, "dtype": "float16"} if t.get("role") in cache_roles else t for t in entry[key]
        ]
    entry[M.S_CUSTOM_OP] = None
    entry[M.S_SESSION_CONFIG] = {}
    entry.pop(M.S_PORTABLE_FILE, None)
    return entry
