"""Tracing one wrapper module to an ONNX file: names, dynamic axes, opset and IR version pinned,
large weights moved to one external-data file beside the graph.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from mvgpt.exporter.wrappers import GraphSpec
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


def export_graph(spec: GraphSpec, path: Path) -> None:
    """Trace ``spec.module`` with its example inputs and write ``path`` (+ ``path.data``)."""
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
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                custom_opsets=spec.custom_opsets,
            )
        model = onnx.load(str(raw))  # pulls any external data the exporter wrote
    save_model(model, path)


def graph_bytes(path: Path) -> int:
    """Size of a graph file plus its external data."""
    data = path.with_name(path.name + ".data")
    return os.path.getsize(path) + (os.path.getsize(data) if data.exists() else 0)
