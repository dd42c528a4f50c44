"""mvgpt-export --precision int8 / int4 on a tiny random checkpoint: every quantized graph loads in
onnxruntime, agrees with its fp32 ONNX graph (cosine printed, then asserted), int4 really puts the
decoder's weight MatMuls into MatMulNBits with accuracy_level 4, and the manifest says so."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mvgpt.exporter.package import export_package
from mvgpt.exporter.quantize import MIN_COSINE, quantize_embedding
from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import ExportError
from mvgpt.runtime.sessions import session_options
from tests.packages import assert_graphs_match_manifest


@pytest.fixture(scope="module")
def fp32(tiny_package):
    return tiny_package, json.loads((tiny_package / M.MANIFEST_FILE).read_text())


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, tiny_quantized_package):
    out = tiny_quantized_package(request.param)
    return request.param, out, json.loads((out / M.MANIFEST_FILE).read_text())


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_every_quantized_graph_loads_and_matches_manifest(quantized):
    precision, out, manifest = quantized
    assert manifest[M.K_PRECISION] == precision
    for path in assert_graphs_match_manifest(out, manifest):
        assert onnx.load(str(path), load_external_data=False).ir_version == M.IR_VERSION
    assert not list(out.glob("*.raw*")) and not (out / ".quantized").exists()


def test_cosine_against_fp32_in_manifest(quantized):
    precision, _, manifest = quantized
    stages = manifest[M.K_QUANTIZATION][M.Q_STAGES]
    for key, entry in stages.items():
        cos, top1 = entry.get(M.Q_COSINE), entry.get(M.Q_TOP1)
        print(f"{precision} {key:<22} {entry[M.Q_METHOD]:<30} cosine {cos} top-1 {top1}")
    assert stages[M.FRAME_SCORER] == {M.Q_METHOD: "fp32"}
    measured = {k: e for k, e in stages.items() if k != M.FRAME_SCORER}
    assert set(measured) == set(M.STAGES) - {M.FRAME_SCORER}
    assert all(e[M.Q_COSINE] >= MIN_COSINE for e in measured.values())
    assert 0.0 <= stages[M.DECODER][M.Q_TOP1] <= 1.0


def test_encoders_int8_and_package_smaller(quantized, fp32):
    precision, out, manifest = quantized
    fp32_out, fp32_manifest = fp32
    for name in ("clip_vision.onnx", "video_mamba.onnx", "video_mamba_portable.onnx"):
        assert _ops(out / name)["MatMulInteger"] > 0, name
    assert (
        _ops(out / "video_mamba.onnx")["SelectiveScan"]
        == _ops(fp32_out / "video_mamba.onnx")["SelectiveScan"]
    )
    assert _ops(out / "frame_scorer.onnx") == _ops(fp32_out / "frame_scorer.onnx")
    embed = onnx.load(str(out / "embed_tokens.onnx"))
    assert [t.data_type for t in embed.graph.initializer if len(t.dims) == 2] == [
        onnx.TensorProto.INT8,
        onnx.TensorProto.FLOAT,  # the per-row scales, (V, 1)
    ]
    total, fp32_total = sum(manifest[M.K_SIZES].values()), sum(fp32_manifest[M.K_SIZES].values())
    print(f"{precision} package {total / 1e6:.1f} MB, fp32 {fp32_total / 1e6:.1f} MB")
    assert total < 0.5 * fp32_total


def test_portable_graphs_are_made_from_the_quantized_graphs(quantized):
    """each portable graph reads its quantized graph's weights (no data file of its own), and
    the portable video_mamba answers as the quantized one does"""
    _, out, manifest = quantized
    for stage in M.CUSTOM_OP_STAGES:
        entry = manifest[M.K_STAGES][stage]
        model = onnx.load(str(out / entry[M.S_PORTABLE_FILE]), load_external_data=False)
        files = {
            d.value for t in model.graph.initializer for d in t.external_data if d.key == "location"
        }
        assert files == {f"{entry[M.S_FILE]}.data"}, (stage, files)
    entry = manifest[M.K_STAGES][M.VIDEO_MAMBA]
    pixels = np.random.default_rng(0).standard_normal((1, 3, 8, 224, 224), np.float32)
    got = []
    for name, op in ((entry[M.S_FILE], M.CUSTOM_OP_SCAN), (entry[M.S_PORTABLE_FILE], None)):
        options = session_options(custom_op=op)
        session = ort.InferenceSession(str(out / name), options, ["CPUExecutionProvider"])
        got.append(session.run(None, {"pixel_values": pixels})[0])
    diff = float(np.abs(got[0] - got[1]).max())
    print(f"video_mamba quantized vs its portable graph: max |diff| {diff:.2e}")
    assert diff < 1e-3 * max(1.0, float(np.abs(got[0]).max()))


def test_int4_decoder_is_matmulnbits(quantized):
    precision, out, _ = quantized
    nodes = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    weight_matmuls = [n for n in nodes if n.op_type in ("MatMulInteger", "MatMulNBits")]
    print(precision, len(nbits), "MatMulNBits of", len(weight_matmuls), "weight MatMuls")
    if precision == "int8":
        assert not nbits and weight_matmuls
        return
    assert nbits and len(nbits) == len(weight_matmuls)
    for n in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["accuracy_level"] == 4 and attrs["bits"] == 4, attrs
        assert attrs["block_size"] == 32, attrs  # int4: onnxruntime-genai's block size
    vocab = max(
        onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "N"
    )
    assert vocab == 151936  # the tied lm_head is quantized too


def test_int8_embedding_table_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    table = (0.02 * rng.standard_normal((50, 16))).astype(np.float32)
    table[3] = 0.0  # an all-zero row must not divide by zero
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    out = onnx.helper.make_tensor_value_info(
        "inputs_embeds", onnx.TensorProto.FLOAT, ["b", "s", 16]
    )
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["w", "input_ids"], ["inputs_embeds"])],
        "g",
        [ids],
        [out],
        [onnx.numpy_helper.from_array(table, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", M.OPSET)])
    onnx.save(model, str(tmp_path / "e.onnx"))
    quantize_embedding(tmp_path / "e.onnx", tmp_path / "q.onnx")
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    query = np.array([[0, 3, 49, 7]], np.int64)
    got = sess.run(None, {"input_ids": query})[0]
    err = np.abs(got - table[query]).max(axis=-1)
    bound = np.abs(table[query]).max(axis=-1) / 254  # half a step of each row's scale
    print("per-row max |err|", err, "bound", bound)
    assert got.shape == (1, 4, 16) and np.all(err <= bound + 1e-9) and np.all(got[0, 1] == 0)


def test_an_unmet_cosine_bar_fails_and_publishes_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "pkg"
    with pytest.raises(ExportError, match="quantization failed") as err:
        export_package(*tiny_checkpoint, out, precision="int8", min_cosine=1.0)
    print(err.value)
    assert "--min-cosine" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".pkg.partial-*"))


def test_int4_precisions_differ_only_in_the_decoders_block_size():
    from mvgpt.exporter import quantize as Q

    files = {stage: f"{stage}.onnx" for stage in M.STAGES}
    int4, b128 = Q.plan("int4", files), Q.plan("int4-b128", files)
    assert int4[M.DECODER] == "int4_matmulnbits_block32_acc4"
    assert b128[M.DECODER] == "int4_matmulnbits_block128_acc4"
    assert {k: v for k, v in int4.items() if k != M.DECODER} == {
        k: v for k, v in b128.items() if k != M.DECODER
    }
    assert all(method in Q.QUANTIZERS for method in b128.values() if method != Q.FP32)


def test_int8_weights_stay_in_the_range_no_kernel_saturates(quantized):
    from mvgpt.exporter.quantize import INT8_WEIGHT_RANGE

    precision, out, _ = quantized
    lo, hi = INT8_WEIGHT_RANGE
    for name in ("clip_vision.onnx", "video_mamba.onnx", "decoder.onnx"):
        model = onnx.load(str(out / name))
        weights = {i.name: i for i in model.graph.initializer}
        seen = [
            onnx.numpy_helper.to_array(weights[n.input[1]])
            for n in model.graph.node
            if n.op_type == "MatMulInteger" and n.input[1] in weights
        ]
        if precision == "int4" and name == "decoder.onnx":
            assert not seen  # MatMulNBits: int4 weights, int8 activations (no u8 x s8 pairs)
            continue
        low, high = min(int(w.min()) for w in seen), max(int(w.max()) for w in seen)
        print(f"{precision} {name}: {len(seen)} int8 weight matrices in [{low}, {high}]")
        assert seen and all(w.dtype == np.int8 for w in seen)
        assert lo <= low and high <= hi
