"""Tracing one wrapper module to an ONNX file: names, dynamic axes, opset and IR version pinned,
large weights moved to one external-data file beside the graph.

The trace holds no weights; ``fold_weights`` computes what the exporter's constant folding
would (transposed and concatenated weights, ...) one tensor at a time and appends each result to
the data file (``ExternalData``), so an export needs the torch model plus its largest few
tensors, not several copies of the model (issue 18; README: Export memory).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mvgpt.exporter.wrappers import GraphSpec
from mvgpt.runtime import manifest as M
from mvgpt.runtime.manifest import IR_VERSION, OPSET

# tensors above 4 KiB (Constant nodes' included) go to <file>.data: the .onnx files stay small,
# and a portable graph, which reads its main graph's .data, repeats almost nothing (a threshold
# of 1 MiB over initializers only left the small weights and the RoPE tables in both graphs)
EXTERNAL_DATA_THRESHOLD = 4 << 10


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save with the pinned IR version; weights over the threshold go to ``<name>.data``."""
    model.ir_version = IR_VERSION
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=EXTERNAL_DATA_THRESHOLD,
        convert_attribute=True,
    )
    if data.exists() and data.stat().st_size == 0:
        data.unlink()


def stamp_graph(path: Path, stage: str, variant: str) -> None:
    """Write the stage's name, the schema version and the variant (manifest G_MAIN or G_PORTABLE)
    into the graph's ONNX metadata, which a runtime checks at load; the nodes and the external
    weights stay as they are (only the .onnx file is rewritten)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {M.G_STAGE: stage, M.G_SCHEMA_VERSION: str(M.SCHEMA_VERSION), M.G_VARIANT: variant}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


class ExternalData:
    """Appends tensors to one external-data file as they come (each at a 4 KiB-aligned offset,
    so onnxruntime can map them), returning TensorProtos that point into it: a graph's weights
    are written one at a time and never held in a ModelProto."""

    ALIGN = 4096

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 (open across tensor() calls; close())
        self.offset = 0

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = array if array.flags.c_contiguous else array.copy()  # (ascontiguousarray
        # would turn a 0-d array into a 1-d one)
        if array.nbytes <= EXTERNAL_DATA_THRESHOLD:
            return numpy_helper.from_array(array, name)
        pad = (-self.offset) % self.ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(memoryview(array.reshape(-1).view(np.uint8)))
        tensor = onnx.TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        for key, val in (
            ("location", self.path.name),
            ("offset", str(self.offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, val
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.offset += array.nbytes
        return tensor

    def close(self) -> None:
        self.file.close()
        if self.offset == 0:
            self.path.unlink()


def read_tensor(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """One initializer's values, read from its external-data file when it has one (only that
    tensor's bytes, into a fresh array: nothing else of the file stays mapped)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    length = int(info["length"])
    array = np.empty(length // np.dtype(dtype).itemsize, dtype)
    with open(folder / info["location"], "rb") as handle:
        handle.seek(int(info.get("offset", 0)))
        handle.readinto(memoryview(array.view(np.uint8)))
    return array.reshape(tuple(tensor.dims))


def constant_tensors(graph: onnx.GraphProto):
    """The tensor values of the graph's Constant nodes (their ``value`` attributes)."""
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` under every name it has (tied weights and
    modules reached twice have several)."""
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    return named


def fold_weights(
    model: onnx.ModelProto, weights: dict[str, torch.Tensor], data: ExternalData
) -> None:
    """Make a graph traced with ``export_params=False`` (weights as graph inputs) what the
    constant-folding export gives, one tensor at a time: every node computed from weights and
    constants only is evaluated here (onnx's reference evaluator: Transpose, Concat, ...) and
    its result, like every weight a remaining node reads, becomes an initializer written straight
    to ``data``; an intermediate is freed after its last use. Peak memory: the largest few
    tensors, not the graph."""
    graph = model.graph
    weight_inputs = [i.name for i in graph.input if i.name in weights]
    values: dict[str, np.ndarray] = {}
    constants = {t.name: t for t in graph.initializer}  # name -> TensorProto or Constant node
    constants.update((n.output[0], n) for n in graph.node if n.op_type == "Constant")
    constant = set(weight_inputs) | constants.keys()
    derived = set(weight_inputs)  # weights and folded values: written as initializers
    fold: list[onnx.NodeProto] = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type != "Constant" and inputs and all(i in constant for i in inputs):
            fold.append(node)  # what the exporter's constant folding would have computed
            constant.update(node.output)
            derived.update(node.output)
    folded = {id(n) for n in fold}  # ``fold`` keeps those wrappers alive, so ids stay unique
    kept = [n for n in graph.node if id(n) not in folded]
    needed = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in needed]
    uses: dict[str, int] = {}
    for node in fold:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1

    def value(name: str) -> np.ndarray:
        if name not in values:
            if name in weights:  # a view of the torch tensor: no copy
                values[name] = weights[name].detach().numpy()
            elif isinstance(constants[name], onnx.TensorProto):
                values[name] = numpy_helper.to_array(constants[name])
            else:
                values[name] = numpy_helper.to_array(
                    helper.get_attribute_value(constants[name].attribute[0])
                )
        return values[name]

    new_initializers: list[onnx.TensorProto] = []
    written = set()

    def emit(name: str) -> None:
        if name in needed and name in derived and name not in written:
            new_initializers.append(data.tensor(name, value(name)))
            written.add(name)

    for name in weight_inputs:  # read directly by a kept node, or only through folded nodes
        if uses.get(name, 0) == 0:
            emit(name)
    for node in fold:
        feeds = {i: value(i) for i in node.input if i}
        outs = ReferenceEvaluator(node).run(None, feeds)
        for name, out in zip(node.output, outs, strict=True):
            values[name] = np.asarray(out)
            emit(name)
            if uses.get(name, 0) == 0:
                values.pop(name, None)
        for i in node.input:
            uses[i] -= 1
            if uses[i] == 0:
                emit(i)
                values.pop(i, None)
    del graph.node[:]
    graph.node.extend(kept)
    keep_inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    graph.initializer.extend(new_initializers)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def externalize(model: onnx.ModelProto, data: ExternalData) -> None:
    """Move the remaining large initializers and Constant values (the trace's own constants,
    e.g. RoPE tables) into ``data``, as ``save_model`` does with ``convert_attribute``."""
    graph = model.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.HasField("raw_data") and len(tensor.raw_data) > EXTERNAL_DATA_THRESHOLD:
            graph.initializer[i].CopyFrom(data.tensor(tensor.name, numpy_helper.to_array(tensor)))
    for value in constant_tensors(graph):
        if len(value.raw_data) > EXTERNAL_DATA_THRESHOLD:
            value.CopyFrom(data.tensor(value.name, numpy_helper.to_array(value)))


def export_graph(spec: GraphSpec, path: Path) -> None:
    """Trace ``spec.module`` with its example inputs and write ``path`` (+ ``path.data``).

    The trace holds no weights (``export_params=False``); ``fold_weights`` then writes them, and
    everything computed from them alone, to ``path.data`` one tensor at a time, so exporting
    costs the model's own memory plus the largest tensors, not several copies of the model."""
    module = (spec.export_module or spec.module).eval()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                module,
                spec.example,
                str(raw),
                dynamo=False,
                export_params=False,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=False,  # fold_weights does it, one tensor at a time
                custom_opsets=spec.custom_opsets,
            )
        model = onnx.load(str(raw))  # the graph only: small
    data_path = path.with_name(path.name + ".data")
    data = ExternalData(data_path)
    try:
        fold_weights(model, _module_tensors(module), data)
        externalize(model, data)
    finally:
        data.close()
    model.ir_version = IR_VERSION
    onnx.save_model(model, str(path))


def graph_bytes(path: Path) -> int:
    """Size of a graph file plus its external data."""
    data = path.with_name(path.name + ".data")
    return os.path.getsize(path) + (os.path.getsize(data) if data.exists() else 0)
