"""The bounded-memory export (issue 18): the decoder is traced without weights and its weights are
written (and quantized) one tensor at a time. Checked against independent implementations: the
folded initializers against the torch module's own tensors, the streaming int8 and int4 decoders
against onnxruntime's quantizers (quantize_dynamic, MatMulNBitsQuantizer) on the same fp32 graph,
tensor for tensor."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mvgpt.exporter.graphs import EXTERNAL_DATA_THRESHOLD, ExternalData, read_tensor
from mvgpt.exporter.quantize import (
    INT4_BLOCK_SIZES,
    quantize_int4,
    quantize_int4_streaming,
    quantize_int8,
    quantize_int8_streaming,
)
from mvgpt.models.checkpoint import load_checkpoint
from mvgpt.models.mobile_videogpt import MobileVideoGPT


def _graph(path: Path):
    return onnx.load(str(path), load_external_data=False).graph


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: read_tensor(t, path.parent) for t in _graph(path).initializer}


def test_external_data_aligns_large_tensors_and_keeps_small_ones_inline(tmp_path):
    data = ExternalData(tmp_path / "g.onnx.data")
    big = np.arange(3000, dtype=np.float32).reshape(30, 100)
    scalar = np.array(7, dtype=np.int64)
    small = data.tensor("small", scalar)
    first = data.tensor("first", big)
    second = data.tensor("second", big[:, :50].T)  # not contiguous: copied
    data.close()
    assert small.data_location != onnx.TensorProto.EXTERNAL and list(small.dims) == []
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in (first, second)]
    print("offsets", offsets, "threshold", EXTERNAL_DATA_THRESHOLD)
    assert all(o % ExternalData.ALIGN == 0 for o in offsets)
    np.testing.assert_array_equal(read_tensor(first, tmp_path), big)
    np.testing.assert_array_equal(read_tensor(second, tmp_path), big[:, :50].T)
    assert read_tensor(small, tmp_path).shape == ()


def test_folded_decoder_weights_equal_the_modules_tensors(tiny_package, tiny_checkpoint):
    """The decoder graph's large initializers are the torch weights as the graph uses them:
    q/k/v and gate/up concatenated, every projection transposed, the tied lm_head transposed."""
    model = MobileVideoGPT.from_checkpoint(load_checkpoint(*tiny_checkpoint))
    decoder = model.decoder
    expected = [decoder.embed_tokens.weight.T]
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        expected += [
            torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)).T,
            attn.o_proj.weight.T,
            torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)).T,
            mlp.down_proj.weight.T,
        ]
    got = [a for a in _initializers(tiny_package / "decoder.onnx").values() if a.ndim == 2]
    assert len(got) == len(expected)
    for want in expected:
        want = want.detach().numpy()
        match = [a for a in got if a.shape == want.shape and np.array_equal(a, want)]
        assert match, f"no initializer equals a {want.shape} weight"
    print(f"{len(expected)} decoder matrices found bit-exact among the initializers")


@pytest.mark.parametrize("precision", ["int8", *INT4_BLOCK_SIZES])
def test_streaming_quantizers_equal_onnxruntimes(tiny_package, tmp_path, precision):
    src = tiny_package / "decoder.onnx"
    ours, theirs = tmp_path / "ours" / "decoder.onnx", tmp_path / "ort" / "decoder.onnx"
    ours.parent.mkdir()
    theirs.parent.mkdir()
    if precision == "int8":
        quantize_int8_streaming(src, ours)
        quantize_int8(src, theirs)
    else:
        quantize_int4_streaming(src, ours, INT4_BLOCK_SIZES[precision])
        quantize_int4(src, theirs, INT4_BLOCK_SIZES[precision])
    a, b = _initializers(ours), _initializers(theirs)
    assert sorted(a) == sorted(b)
    worst = 0.0
    for name, value in b.items():
        assert a[name].dtype == value.dtype and a[name].shape == value.shape, name
        worst = max(worst, float(np.abs(a[name].astype(np.float64) - value).max(initial=0)))
    print(f"{precision}: {len(b)} initializers, max |ours - onnxruntime's| = {worst}")
    assert worst == 0.0
    ops = lambda p: Counter(n.op_type for n in _graph(p).node)  # noqa: E731
    assert ops(ours) == ops(theirs)
    outputs = lambda p: sorted(o for n in _graph(p).node for o in n.output)  # noqa: E731
    assert outputs(ours) == outputs(theirs)
