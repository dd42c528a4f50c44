"""int8 packages answer the same on every x86 CPU: proven under user-mode emulation of a CPU
without AVX-512 and VNNI (qemu's Haswell model: AVX2 + FMA), whatever CPU runs the tests.

onnxruntime's u8 x s8 kernel for AVX2 (and for AVX-512 without VNNI) adds pairs of u8 * s8
products in int16 (vpmaddubsw) and saturates when both weights of a pair are near +-127 and the
activations near 255; VNNI adds four products in int32 and does not. The exporter's int8 weights
(exporter/quantize.py INT8_WEIGHT_RANGE) are chosen so that no kernel saturates. These tests show:
1. one MatMulInteger node: onnxruntime's result equals exact integer arithmetic for the exporter's
   weight encoding, natively and on the emulated AVX2 CPU, while full-range s8 weights do not on
   the emulated CPU (so the emulation really reaches the saturating kernel);
2. the tiny int8 package's decoder against its fp32 graph: the same cosine natively and emulated,
   at least MIN_COSINE;
3. the same natively with benchmarks/avx2_view.py hiding AVX-512 and VNNI, or only VNNI (a
   Skylake-SP's AVX-512 int8 kernel, which adds in int16 like AVX2's), where the machine offers
   CPUID faulting: seconds instead of emulation's minutes.
"""

from __future__ import annotations

import json
import os

import pytest

from mvgpt.exporter.quantize import INT8_WEIGHT_RANGE, MIN_COSINE
from tests.emulation import AVX2_CPU, cpu_view, run_python

MATMUL_SCRIPT = r"""
import json, sys
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from numpy._core._multiarray_umath import __cpu_features__ as cpu

def error(weights, zero_point, m=32, k=256, n=48):
    rng = np.random.default_rng(0)
    a = rng.integers(200, 256, (m, k)).astype(np.uint8)  # activations near the top of u8
    w = weights(rng, (k, n))
    nodes = [helper.make_node("MatMulInteger", ["a", "w", "azp", "wzp"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.uint8(0), "azp"),
             numpy_helper.from_array(np.array(zero_point, w.dtype), "wzp")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    exact = a.astype(np.int64) @ (w.astype(np.int64) - zero_point)
    return int(np.abs(sess.run(None, {"a": a})[0] - exact).max())

lo, hi, dtype, zp = json.loads(sys.argv[1])
print(json.dumps({
    "avx512f": bool(cpu["AVX512F"]), "vnni": bool(cpu["AVX512VNNI"]), "avx2": bool(cpu["AVX2"]),
    "full_s8": error(lambda r, s: r.integers(-127, 128, s).astype(np.int8), 0),
    "exporter": error(lambda r, s: r.integers(lo, hi + 1, s).astype(dtype), zp),
}))
"""


def matmul_errors(cpu: str | None = None, env: dict | None = None) -> dict:
    """MATMUL_SCRIPT's report natively, on qemu's CPU model `cpu`, or with `env` (a view of
    benchmarks/avx2_view.py)."""
    lo, hi = INT8_WEIGHT_RANGE
    args = ["-c", MATMUL_SCRIPT, json.dumps([lo, hi, "int8", 0])]
    return json.loads(run_python(args, cpu=cpu, env=env).strip().splitlines()[-1])


def test_matmul_integer_exact_with_exporter_weights_on_any_cpu():
    native, emulated = matmul_errors(), matmul_errors(AVX2_CPU)
    print("native", native)
    print("emulated", AVX2_CPU, emulated)
    assert emulated["avx2"] and not emulated["avx512f"] and not emulated["vnni"], emulated
    assert emulated["full_s8"] > 0  # the emulated CPU runs the saturating u8 x s8 kernel
    assert native["exporter"] == 0 and emulated["exporter"] == 0


def _decoder_check(fp32, quantized, cpu: str | None = None, env: dict | None = None) -> dict:
    args = ["-m", "mvgpt.exporter.agreement", str(fp32), str(quantized), "--stages", "decoder"]
    return json.loads(run_python(args, cpu=cpu, env=env).strip().splitlines()[-1])


def _assert_agree(precision: str, native: dict, where: str, other: dict) -> None:
    """The decoder on another CPU as close to fp32 as natively: integer products are exact on
    both; only float rounding order differs."""
    for name, check in (("native", native), (where, other)):
        print(
            f"{precision} decoder {name}: cosine {check['cosine']:.6f} top-1 "
            f"{check['top1_agreement']:.3f} max |diff| {check['max_abs_diff']:.3e}"
        )
    assert other["cosine"] >= MIN_COSINE and native["cosine"] >= MIN_COSINE
    assert abs(other["cosine"] - native["cosine"]) < 1e-5
    assert other["top1_agreement"] == native["top1_agreement"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_decoder_agrees_with_fp32_on_an_avx2_cpu(
    tiny_package, tiny_quantized_package, precision
):
    package = tiny_quantized_package(precision)
    native = _decoder_check(tiny_package, package)
    emulated = _decoder_check(tiny_package, package, cpu=AVX2_CPU)
    _assert_agree(precision, native, f"emulated {AVX2_CPU}", emulated)


@pytest.mark.parametrize("view", ["avx2", "avx512-novnni"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_decoder_agrees_with_fp32_without_vnni(
    tiny_package, tiny_quantized_package, precision, view, tmp_path
):
    if why := cpu_view.unavailable(view):
        pytest.skip(why)
    package = tiny_quantized_package(precision)
    native = _decoder_check(tiny_package, package)
    env = cpu_view.environment({**os.environ, "MVGPT_CACHE": str(tmp_path)}, view=view)
    _assert_agree(precision, native, view, _decoder_check(tiny_package, package, env=env))
