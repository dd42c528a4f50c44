"""fp16 packages (issue 15): ``mvgpt-export --precision fp16`` and ``--package`` conversion,
checked on the CPU (onnxruntime's CPU provider runs the fp16 graphs): what stays fp32, the
manifest, the per-stage cosine bar and its fallback, the fp16 KV cache in the Python runtime
(host memory, and onnxruntime-allocated device buffers on the "cpu" device: the code path the
CUDA provider takes), the built-in trained model's answers, and libmvgpt's refusal with a reason.
What only a GPU shows (speed, fp16 on CUDA kernels) is benchmarks/gpu_check.sh's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from mvgpt.exporter.agreement import compare
from mvgpt.exporter.half import FP16, FP16_MIN_COSINE
from mvgpt.exporter.package import convert_package
from mvgpt.runtime import manifest as M
from mvgpt.runtime.decoder import KVCache
from mvgpt.runtime.default_model import builtin_package, builtin_sample
from mvgpt.runtime.pipeline import Pipeline
from tests.native.libmvgpt import NATIVE_DIR


@pytest.fixture(scope="module")
def fp16_package(tiny_quantized_package):
    return tiny_quantized_package("fp16")


@pytest.fixture(scope="module")
def builtin_fp16(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin16") / "pkg"
    convert_package(builtin_package(), out, precision="fp16")
    return out


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _is_fp32_cast(node: onnx.NodeProto | None) -> bool:
    is_cast = node is not None and node.op_type == "Cast"
    return is_cast and node.attribute[0].i == onnx.TensorProto.FLOAT


def test_fp16_package_manifest_and_graphs(fp16_package, tiny_package):
    manifest = json.loads((fp16_package / M.MANIFEST_FILE).read_text())
    assert manifest[M.K_PRECISION] == "fp16"
    quant = manifest[M.K_QUANTIZATION]
    assert quant[M.Q_MIN_COSINE] == FP16_MIN_COSINE
    for stage, entry in quant[M.Q_STAGES].items():
        print(stage, entry)
        if stage == M.FRAME_SCORER:
            assert entry[M.Q_METHOD] == "fp32"
        else:
            assert entry[M.Q_METHOD] == FP16 and entry[M.Q_COSINE] >= FP16_MIN_COSINE
    decoder = manifest[M.K_STAGES][M.DECODER]
    assert decoder[M.S_CUSTOM_OP] is None and M.S_PORTABLE_FILE not in decoder
    assert not (fp16_package / M.portable_file(M.DECODER)).exists()
    cache_roles = (*M.CACHE_INPUT_ROLES, *M.CACHE_OUTPUT_ROLES)
    for t in (*decoder[M.S_INPUTS], *decoder[M.S_OUTPUTS]):
        want = "float16" if t[M.S_ROLE] in cache_roles else t[M.S_DTYPE]
        assert t[M.S_DTYPE] == want
    graph = onnx.load(str(fp16_package / decoder[M.S_FILE]), load_external_data=False).graph
    types = {t.name: t.type.tensor_type.elem_type for t in (*graph.input, *graph.output)}
    assert types["inputs_embeds"] == types["logits"] == onnx.TensorProto.FLOAT
    assert types["past_key_values.0.key"] == types["present.0.value"] == onnx.TensorProto.FLOAT16
    assert {n.domain for n in graph.node if n.op_type == "GroupQueryAttention"} == {
        M.ORT_CONTRIB_DOMAIN
    }
    produced = _producers(graph)
    pows = [n for n in graph.node if n.op_type == "Pow"]  # RMSNorm's square: fp32
    assert pows and all(_is_fp32_cast(produced.get(n.input[0])) for n in pows)
    mamba = onnx.load(str(fp16_package / "video_mamba.onnx"), load_external_data=False).graph
    produced = _producers(mamba)
    scans = [n for n in mamba.node if n.op_type == M.CUSTOM_OP_SCAN]
    for scan in scans:  # fp32 inputs: casts from fp16, or fp32 constants
        inits = {i.name: i.data_type for i in mamba.initializer}
        for name in filter(None, scan.input):
            assert _is_fp32_cast(produced.get(name)) or inits.get(name) == onnx.TensorProto.FLOAT
    fp32_sizes = json.loads((tiny_package / M.MANIFEST_FILE).read_text())[M.K_SIZES]
    ratio = manifest[M.K_SIZES]["decoder.onnx"] / fp32_sizes["decoder.onnx"]
    print(f"decoder bytes fp16 / fp32: {ratio:.3f}")
    assert 0.45 < ratio < 0.55


def test_fp16_package_runs_like_fp32_with_an_fp16_cache(fp16_package, tiny_package):
    sample = builtin_sample()
    ref, half = Pipeline.load(tiny_package, threads=2), Pipeline.load(fp16_package, threads=2)
    ref_enc, half_enc = ref.encode(sample.video), half.encode(sample.video)
    diff, cosine = compare([half_enc.visual], [ref_enc.visual])
    print(f"visual tokens fp16 vs fp32: max |diff| {diff:.2e}, cosine {cosine:.6f}")
    assert cosine >= FP16_MIN_COSINE
    cache = half.decoder.new_cache(8)
    assert cache.in_use(0, 0).dtype == np.float16
    answer = half.answer(half_enc, "What is happening?", max_new_tokens=4)
    assert len(answer.token_ids) == 4


def test_builtin_model_in_fp16_answers_as_in_fp32(builtin_fp16):
    sample = builtin_sample()
    manifest = json.loads((builtin_fp16 / M.MANIFEST_FILE).read_text())
    cosines = {k: v[M.Q_COSINE] for k, v in manifest[M.K_QUANTIZATION][M.Q_STAGES].items()
               if M.Q_COSINE in v}  # fmt: skip
    print("built-in model, fp16 vs fp32 cosine per stage:", cosines)
    assert manifest[M.K_SOURCE]["converted_from"] == str(builtin_package().resolve())
    for package in (builtin_package(), builtin_fp16):
        pipe = Pipeline.load(package, threads=2)
        encoding = pipe.encode(sample.video)
        got = [pipe.answer(encoding, q["question"]).text.strip() for q in sample.questions]
        print(package.name, got)
        assert got == [q["answer"] for q in sample.questions]


@pytest.mark.parametrize("package", ["builtin", "builtin_fp16"])
def test_kv_cache_on_an_onnxruntime_device(package, builtin_fp16):
    """The device cache (onnxruntime-allocated buffers bound in place, KVCache(device=...)) gives
    the host cache's tokens, also after a kept prefix is loaded back (the second answer)."""
    folder = builtin_package() if package == "builtin" else builtin_fp16
    sample = builtin_sample()
    runs = {}
    for device in (None, "cpu"):
        pipe = Pipeline.load(folder, threads=2)
        pipe.decoder.cache_device = device
        encoding = pipe.encode(sample.video)
        runs[device] = [
            pipe.answer(encoding, q["question"], repetition_penalty=1.2).token_ids
            for q in sample.questions * 2
        ]
    print(runs)
    assert runs[None] == runs["cpu"]
    device_cache = KVCache(2, 2, 4, 16, "float16", device="cpu")
    keys = tuple(np.full((1, 2, 5, 4), i + 1, np.float16) for i in range(2))
    values = tuple(np.full((1, 2, 5, 4), -i - 1, np.float16) for i in range(2))
    device_cache.load(keys, values)
    got_keys, got_values = device_cache.snapshot()
    assert device_cache.length == 5
    pairs = zip(got_keys + got_values, keys + values, strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    rest = device_cache.ort_values[0][0].numpy()[:, :, 5:]  # zeroed at allocation, kept by load
    assert rest.shape == (1, 2, 11, 4) and not rest.any()


def test_a_stage_below_the_bar_keeps_fp32(tmp_path):
    """An unreachable bar keeps every stage's fp32 graph and says so; the package answers exactly
    as the fp32 one (same graphs), its decoder still with the mvgpt op and its portable twin."""
    out = tmp_path / "pkg"
    convert_package(builtin_package(), out, precision="fp16", min_cosine=1.5)
    manifest = json.loads((out / M.MANIFEST_FILE).read_text())
    stages = manifest[M.K_QUANTIZATION][M.Q_STAGES]
    assert all(v[M.Q_METHOD] == "fp32" for v in stages.values())
    assert all(M.Q_KEPT in v for k, v in stages.items() if k != M.FRAME_SCORER)
    assert manifest[M.K_STAGES][M.DECODER][M.S_CUSTOM_OP] is not None
    assert (out / M.portable_file(M.DECODER)).is_file()
    sample = builtin_sample()
    answers = []
    for package in (builtin_package(), out):
        pipe = Pipeline.load(package, threads=2)
        encoding = pipe.encode(sample.video)
        answers.append([pipe.answer(encoding, q["question"]).token_ids for q in sample.questions])
    assert answers[0] == answers[1]


def test_export_cli_package_conversion_errors(tmp_path, builtin_fp16):
    def export(*args):
        cmd = [sys.executable, "-m", "mvgpt.exporter.cli", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True)

    done = export("--package", builtin_fp16, "--out", tmp_path / "x", "--precision", "int8")
    assert done.returncode == 1 and "expected an fp32 package to convert" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    done = export("--package", tmp_path / "none", "--out", tmp_path / "y", "--precision", "fp16")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_native_runtime_refuses_an_fp16_cache_with_the_reason(builtin_fp16):
    cli = NATIVE_DIR / "bin" / "mvgpt-cli"
    if not cli.is_file():
        pytest.skip(f"{cli} is not built: the set-up command builds it")
    sample = builtin_sample()
    done = subprocess.run([cli, sample.video, "How many objects are there?", "--model",
                           builtin_fp16], capture_output=True, text=True)  # fmt: skip
    print(done.stderr)
    assert done.returncode == 1 and "expected a float32 KV cache" in done.stderr


@pytest.mark.gpu
def test_builtin_fp16_on_cuda_answers_as_fp32_on_the_cpu(builtin_fp16):
    """On a GPU (benchmarks/gpu_check.sh): the fp16 package on the CUDA provider, its KV cache on
    the device, VideoMamba's scan on the library's CUDA kernel when the library has one."""
    import onnxruntime as ort

    from mvgpt import kernels
    from mvgpt.runtime.sessions import library_providers

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu on a GPU")
    sample = builtin_sample()
    pipe = Pipeline.load(builtin_fp16, "cuda")
    assert pipe.decoder.cache_device == "cuda"
    encoding = pipe.encode(sample.video)
    got = [pipe.answer(encoding, q["question"]).text.strip() for q in sample.questions]
    print(got, pipe.package.notes)
    assert got == [q["answer"] for q in sample.questions]
    if "CUDAExecutionProvider" in library_providers(M.CUSTOM_OP_SCAN):
        assert kernels.last_isa(M.CUSTOM_OP_SCAN) == "cuda"
