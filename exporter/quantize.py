"""Quantized precisions of a package: which graph gets which weight quantization, the int8
embedding-table graph, and the check of every quantized graph against its fp32 ONNX graph.

- ``int8``: onnxruntime's dynamic quantization (int8 weights in the 7-bit range [-64, 64], see
  INT8_REDUCE_RANGE; uint8 activations quantized at run time) of the MatMuls with constant
  weights in clip_vision, video_mamba, both projectors and the decoder (its tied lm_head is a
  plain MatMul on a constant-folded, pre-transposed copy of the table, so it is quantized too).
  embed_tokens becomes an int8 table with one fp32 scale per row, dequantized in the graph
  (Gather, Gather, Mul). The frame scorer stays fp32: it has no weights and its softmax scores
  decide which frames are kept. The portable graphs are not quantized on their own: the exporter
  makes them again from the quantized graphs (package.write_portable_graphs).
- ``int4``: the decoder's weight MatMuls (lm_head included) as ``MatMulNBits`` (4-bit symmetric
  blocks of 32 along K, as onnxruntime-genai's builder makes them; ``accuracy_level=4`` so the CPU
  kernel runs int8 dot products); the rest as ``int8``.
- ``int4-b128``: the same with blocks of 128: fewer scales, a faster decode step, a larger error
  (README: Precisions).
- ``fp16``: the GPU package (exporter/half.py): every stage but the frame scorer in fp16, checked
  against fp32 with the stricter FP16_MIN_COSINE; a stage below it keeps its fp32 graph (the
  manifest says which) instead of failing the export.

The decoder (most of a package's bytes) is quantized by ``quantize_int8_streaming`` /
``quantize_int4_streaming``: the same nodes, names and values as onnxruntime's quantizers give
(tests/export/test_streaming.py compares them tensor for tensor), built one weight at a time
from the fp32 graph's data file instead of a whole model loaded into the quantizer, so the
export's memory does not grow with the decoder (issue 18: the 1.5B int8 export was killed at
22 GB). The smaller graphs keep onnxruntime's quantizers.

Every quantized graph is run next to its fp32 graph on the same fresh inputs (projectors on the
fp32 encoders' outputs, the decoder on embeddings of random token ids, prefill plus cached steps);
cosine < ``MIN_COSINE`` in any stage fails the export with one ExportError naming all of them.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mvgpt.exporter.agreement import QuantCheck, check_quantized
from mvgpt.exporter.graphs import ExternalData, constant_tensors, read_tensor, save_model
from mvgpt.exporter.half import FP16, FP16_MIN_COSINE, convert_fp16
from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import ExportError

PRECISIONS = ("fp32", "int8", "int4", "int4-b128", "fp16")
MIN_COSINE = 0.99
INT8_PER_CHANNEL = True  # closer to fp32 than per-tensor scales, at the same speed
# Weights in [-64, 64], not [-127, 127], so that no CPU's int8 kernel saturates: onnxruntime's
# u8 x s8 kernel for AVX2 (and AVX-512 without VNNI) adds pairs of u8 * s8 products in int16
# (vpmaddubsw), which overflows past 32767 when both weights of a pair are large and the
# activations near 255; 255 * 64 * 2 = 32640 fits. VNNI adds four products in int32 and never
# saturated, so full-range packages answered differently by CPU. u8 weights (onnxruntime's
# u8 x u8 kernel) cannot saturate either but make prefill slower; the 7-bit weights keep the
# u8 x s8 kernels' speed on every CPU (README: Precisions; tests/export/test_int8_any_cpu.py).
INT8_REDUCE_RANGE = True
INT8_WEIGHT_RANGE = (-64, 64)  # what INT8_REDUCE_RANGE gives symmetric int8 weights
INT8_OP_TYPES = ["MatMul"]  # the traced graphs hold no Gemm (Linear on 3-D inputs is MatMul+Add)
INT4_BLOCK_SIZES = {"int4": 32, "int4-b128": 128}
INT4_ACCURACY_LEVEL = 4  # int8 activations x int4 weights: the fast CPU path

INT8_DYNAMIC = "int8_dynamic_matmul_7bit"  # M.INT8_FULL_RANGE before the 7-bit weights
INT8_EMBEDDING = "int8_per_row_table"
INT4_MATMULNBITS = {
    precision: f"int4_matmulnbits_block{block}_acc{INT4_ACCURACY_LEVEL}"
    for precision, block in INT4_BLOCK_SIZES.items()
}
FP32 = "fp32"

Progress = Callable[[str], None]


def plan(precision: str, files: dict[str, str]) -> dict[str, str]:
    """Method per ``files`` key (stage names) for a precision."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    methods = {}
    for key in files:
        if precision == "fp32" or key == M.FRAME_SCORER:
            methods[key] = FP32
        elif precision == "fp16":
            methods[key] = FP16
        elif key == M.EMBED_TOKENS:
            methods[key] = INT8_EMBEDDING
        elif key == M.DECODER and precision in INT4_MATMULNBITS:
            methods[key] = INT4_MATMULNBITS[precision]
        else:
            methods[key] = INT8_DYNAMIC
    return methods


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizers log a pre-processing hint on the root logger for every graph."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of constant-weight MatMuls; custom-domain nodes pass through."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(dst.name + ".raw")
    with _quiet_root_logger():
        quantize_dynamic(
            src,
            tmp,
            op_types_to_quantize=INT8_OP_TYPES,
            per_channel=INT8_PER_CHANNEL,
            reduce_range=INT8_REDUCE_RANGE,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
    save_model(onnx.load(str(tmp)), dst)
    tmp.unlink()
    tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)


def int8_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> (int8 (K, N), fp32 scale (N,)): per column, symmetric, 7-bit range, the
    values onnxruntime's dynamic quantizer gives with per_channel and reduce_range (scale =
    2 * max|w| / 128, round half to even, clip to [-64, 64]; a zero column gets scale 1)."""
    qmin, qmax = INT8_WEIGHT_RANGE
    absmax = np.maximum(np.abs(weight.min(axis=0)), np.abs(weight.max(axis=0)))
    absmax = absmax.astype(np.float32)
    scale = (np.float32(2.0) * absmax / np.float32(qmax - qmin)).astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    q = np.rint(weight / scale)
    np.clip(q, qmin, qmax, out=q)
    return q.astype(np.int8), scale


def _is_weight(inits: dict[str, onnx.TensorProto], name: str) -> bool:
    t = inits.get(name)
    return t is not None and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT


def _rewrite_weight_matmuls(src: Path, dst: Path, rewrite, domains: tuple[str, ...] = ()) -> None:
    """Copy the graph ``src`` to ``dst`` one tensor at a time, replacing every MatMul on a 2-D
    fp32 initializer with ``rewrite(node, weight, data, state)`` -> (nodes, initializers);
    every other initializer and Constant value is copied into ``dst``'s data file. ``domains``:
    op domains the new nodes use (imported at version 1 when the graph lacks them)."""
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    all_nodes = list(graph.node)  # (wrappers kept alive: the loops below match by position)
    targets = {
        k
        for k, n in enumerate(all_nodes)
        if n.op_type == "MatMul" and _is_weight(inits, n.input[1])
    }
    other_uses = {i for k, n in enumerate(all_nodes) if k not in targets for i in n.input}
    other_uses |= {o.name for o in graph.output}
    data = ExternalData(dst.with_name(dst.name + ".data"))
    nodes, initializers, state = [], [], {}
    try:
        for k, node in enumerate(all_nodes):
            if k in targets:
                weight = read_tensor(inits[node.input[1]], src.parent)
                more_nodes, more_inits = rewrite(node, weight, data, state)
                del weight
                nodes += more_nodes
                initializers += more_inits
                continue
            nodes.append(node)
        for value in constant_tensors(graph):
            value.CopyFrom(data.tensor(value.name, read_tensor(value, src.parent)))
        for name in [n for n in inits if n in other_uses]:
            initializers.append(data.tensor(name, read_tensor(inits[name], src.parent)))
    finally:
        data.close()
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    present = {o.domain for o in model.opset_import}
    model.opset_import.extend(helper.make_opsetid(d, 1) for d in domains if d not in present)
    model.ir_version = M.IR_VERSION
    onnx.save_model(model, str(dst))


def _int8_matmul(node, weight, data, state):
    """DynamicQuantizeLinear (once per activation), MatMulInteger, Cast, scales product, Mul:
    the nodes and names onnxruntime's quantize_dynamic gives a MatMul."""
    x, w, y = node.input[0], node.input[1], node.output[0]
    nodes, inits = [], []
    activations = state.setdefault("activations", {})
    weights = state.setdefault("weights", {})
    if x not in activations:
        activations[x] = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
        nodes.append(
            helper.make_node(
                "DynamicQuantizeLinear", [x], list(activations[x]), f"{x}_QuantizeLinear"
            )
        )
    if w not in weights:
        q, scale = int8_weight(weight)
        weights[w] = (f"{w}_quantized", f"{w}_scale", f"{w}_zero_point")
        inits += [
            data.tensor(weights[w][0], q),
            data.tensor(weights[w][1], scale),
            data.tensor(weights[w][2], np.zeros(scale.shape, np.int8)),
        ]
    (xq, xs, xz), (wq, ws, wz) = activations[x], weights[w]
    base = node.name or y
    raw = f"{y}_output_quantized"
    cast = f"{y}_output_quantized_cast_output"
    scales = f"{base}_quant_scales_mul:0"
    nodes += [
        helper.make_node("MatMulInteger", [xq, wq, xz, wz], [raw], f"{base}_quant"),
        helper.make_node("Cast", [raw], [cast], f"{y}_output_quantized_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [xs, ws], [scales], f"{base}_quant_scales_mul"),
        helper.make_node("Mul", [cast, scales], [y], f"{base}_quant_output_scale_mul"),
    ]
    return nodes, inits


def quantize_int8_streaming(src: Path, dst: Path) -> None:
    """The decoder's int8: the graph ``quantize_int8`` makes, built one weight at a time from
    the fp32 graph's data file, so that a large decoder is never in memory whole."""
    _rewrite_weight_matmuls(src, dst, _int8_matmul)


def _int4_matmul(node, weight, data, state, block_size: int):
    """MatMulNBits (4-bit symmetric blocks of ``block_size`` along K) with onnxruntime's own
    packing (``quantize_matmul_4bits``, what MatMulNBitsQuantizer calls) and its names."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape  # (K, N)
    k_blocks = (rows + block_size - 1) // block_size
    if k_blocks * block_size != rows:
        weight = np.pad(weight, ((0, k_blocks * block_size - rows), (0, 0)))
    weight = np.ascontiguousarray(weight, np.float32)
    packed = np.zeros((cols, k_blocks, block_size // 2), np.uint8)
    scales = np.zeros((cols, k_blocks), np.float32)
    zero_points = np.zeros((cols, (k_blocks + 1) // 2), np.uint8)
    quantize_matmul_4bits(packed, weight, scales, zero_points, block_size, cols, rows, True)
    w = node.input[1]
    inits = [data.tensor(f"{w}_Q4", packed), data.tensor(f"{w}_scales", scales)]
    matmul = helper.make_node(
        "MatMulNBits",
        [node.input[0], f"{w}_Q4", f"{w}_scales"],
        [node.output[0]],
        f"{node.name}_Q4" if node.name else "",
        domain="com.microsoft",
        K=rows,
        N=cols,
        bits=4,
        block_size=block_size,
        accuracy_level=INT4_ACCURACY_LEVEL,
    )
    return [matmul], inits


def quantize_int4_streaming(src: Path, dst: Path, block_size: int) -> None:
    """The decoder's int4 (``quantize_int4``'s graph), one weight at a time."""
    _rewrite_weight_matmuls(
        src, dst, functools.partial(_int4_matmul, block_size=block_size), ("com.microsoft",)
    )


def quantize_int4(src: Path, dst: Path, block_size: int) -> None:
    """Every constant-weight MatMul as MatMulNBits (4-bit, symmetric, blocks along K)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL
    )
    with _quiet_root_logger():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
        quantizer.process()
    save_model(quantizer.model.model, dst)


def quantize_embedding(src: Path, dst: Path) -> None:
    """Gather table -> int8 rows with one fp32 scale each (symmetric, max |row| -> 127)."""
    model = onnx.load(str(src))
    tables = [t for t in model.graph.initializer if len(t.dims) == 2]
    if len(model.graph.node) != 1 or model.graph.node[0].op_type != "Gather" or len(tables) != 1:
        raise ExportError(
            f"{src.name}: expected one Gather on one 2-D table, got ops "
            f"{[n.op_type for n in model.graph.node]}; fix the embed_tokens wrapper"
        )
    table = numpy_helper.to_array(tables[0]).astype(np.float32)  # (V, H)
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0  # (V, 1)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    ids, out = model.graph.input[0].name, model.graph.output[0].name
    nodes = [
        helper.make_node("Gather", ["table_int8", ids], ["rows_int8"], axis=0),  # (B, S, H)
        helper.make_node("Cast", ["rows_int8"], ["rows"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["row_scale", ids], ["scales"], axis=0),  # (B, S, 1)
        helper.make_node("Mul", ["rows", "scales"], [out]),
    ]
    graph = helper.make_graph(
        nodes,
        model.graph.name,
        list(model.graph.input),
        list(model.graph.output),
        [numpy_helper.from_array(q, "table_int8"), numpy_helper.from_array(scale, "row_scale")],
    )
    new = helper.make_model(graph, opset_imports=list(model.opset_import))
    new.producer_name, new.producer_version = model.producer_name, model.producer_version
    save_model(new, dst)


QUANTIZERS = {
    INT8_DYNAMIC: quantize_int8,
    (INT8_DYNAMIC, M.DECODER): quantize_int8_streaming,
    **{
        (INT4_MATMULNBITS[precision], M.DECODER): functools.partial(
            quantize_int4_streaming, block_size=block
        )
        for precision, block in INT4_BLOCK_SIZES.items()
    },
    **{
        INT4_MATMULNBITS[precision]: functools.partial(quantize_int4, block_size=block)
        for precision, block in INT4_BLOCK_SIZES.items()
    },
    INT8_EMBEDDING: quantize_embedding,
    **{(FP16, stage): functools.partial(convert_fp16, stage=stage) for stage in M.STAGES},
}


def min_cosine_for(precision: str, min_cosine: float | None) -> float:
    """The bar each converted graph must reach: ``min_cosine`` when given, else the precision's
    (FP16_MIN_COSINE for fp16, MIN_COSINE for the integer ones)."""
    if min_cosine is not None:
        return min_cosine
    return FP16_MIN_COSINE if precision == "fp16" else MIN_COSINE


def quantize_package(
    staging: Path,
    files: dict[str, str],
    precision: str,
    progress: Progress,
    min_cosine: float = MIN_COSINE,
) -> list[QuantCheck]:
    """Quantize the fp32 graphs in ``staging`` in place (same file names); return the checks.

    The quantized graphs are written to a subfolder first and checked against the fp32 graphs;
    only when every stage passes do they replace the fp32 files.
    """
    methods = plan(precision, files)
    todo = {k: m for k, m in methods.items() if m != FP32}
    if not todo:
        return []
    qdir = staging / ".quantized"
    qdir.mkdir()
    try:
        for n, (key, method) in enumerate(todo.items(), 1):
            verb = "converting" if method == FP16 else "quantizing"
            progress(f"[{n}/{len(todo)}] {verb} {files[key]} ({method})")
            quantizer = QUANTIZERS.get((method, key)) or QUANTIZERS[method]
            quantizer(staging / files[key], qdir / files[key])
        progress("checking quantized graphs against fp32")
        checks = check_quantized(staging, qdir, files, todo, min_cosine)
        progress("quantization:\n" + format_table(checks))
        bad = [c for c in checks if not c.ok]
        if bad and precision == "fp16":  # those stages keep their fp32 graphs
            progress(f"kept fp32 for {', '.join(c.file for c in bad)} (below {min_cosine} in fp16)")
            todo = {k: m for k, m in todo.items() if k not in {c.stage for c in bad}}
        elif bad:
            detail = "; ".join(f"{c.file}: cosine {c.cosine:.4f}" for c in bad)
            raise ExportError(
                f"{precision} quantization failed for {len(bad)} graph(s): {detail} (expected "
                f"cosine >= {min_cosine} against fp32); export at a higher precision, or lower "
                "the bar with --min-cosine (the manifest records it)"
            )
        for key in todo:
            for name in (files[key], files[key] + ".data"):
                (staging / name).unlink(missing_ok=True)
                if (qdir / name).exists():
                    (qdir / name).rename(staging / name)
    finally:
        shutil.rmtree(qdir, ignore_errors=True)
    return checks


def format_table(checks: list[QuantCheck]) -> str:
    rows = [f"{'graph':<28} {'method':<32} {'max |diff|':>11} {'cosine':>10} {'top-1':>7}  ok"]
    for c in checks:
        top1 = f"{c.top1_agreement:>7.3f}" if c.top1_agreement is not None else f"{'-':>7}"
        rows.append(
            f"{c.file:<28} {c.method:<32} {c.max_abs_diff:>11.3e} {c.cosine:>10.6f} {top1}  "
            f"{'yes' if c.ok else 'NO'}"
        )
    return "\n".join(rows)


def manifest_entry(
    precision: str, files: dict[str, str], checks: list[QuantCheck], min_cosine: float = MIN_COSINE
) -> dict:
    """The manifest's ``quantization`` object: method and measured agreement per graph."""
    methods = plan(precision, files)
    measured = {c.stage: c.to_dict() for c in checks}
    for check in checks:
        if not check.ok:  # fp16 only (integer precisions fail the export): kept fp32
            kept = {M.Q_METHOD: FP32, M.Q_KEPT: "fp16 cosine below min_cosine"}
            measured[check.stage] = {**measured[check.stage], **kept}
    return {
        M.Q_MIN_COSINE: min_cosine,
        M.Q_REFERENCE: "fp32 ONNX graphs of the same export, same seeded random inputs"
        + (
            "; measured on the CPU provider, which runs some fp16 nodes in fp32 behind casts: "
            "a GPU may differ"
            if precision == "fp16"
            else ""
        ),
        M.Q_STAGES: {k: measured.get(k, {M.Q_METHOD: m}) for k, m in methods.items()},
    }
