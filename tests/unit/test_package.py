"""Loading a package: manifest errors, provider errors, the graph/manifest check that reports
every mismatch in one PackageError, and the portable video_mamba fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import KernelError, MvgptError, PackageError
from mvgpt.runtime.package import load_package, read_manifest
from mvgpt.runtime.sessions import NO_SPINNING


def _copy(source: Path, dest: Path, edit=None, skip: tuple[str, ...] = ()) -> Path:
    """Link the package's files into `dest`; write its manifest, edited by `edit(manifest)`."""
    dest.mkdir()
    for item in source.iterdir():
        if item.name != "manifest.json" and item.name not in skip:
            (dest / item.name).symlink_to(item)
    manifest = json.loads((source / "manifest.json").read_text())
    if edit is not None:
        edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_loads_and_checks_a_good_package(tiny_package):
    package = load_package(tiny_package, threads=1)
    assert set(package.sessions) == {
        "clip_vision", "frame_scorer", "video_mamba", "image_projector", "video_projector",
        "embed_tokens", "decoder",
    }  # fmt: skip
    assert package.random_weights
    if package.custom_ops:  # SelectiveScan stops onnxruntime's spinning (its own threads)
        options = package.sessions[M.VIDEO_MAMBA].get_session_options()
        assert options.get_session_config_entry(NO_SPINNING[0]) == NO_SPINNING[1] == "0"
        with pytest.raises(RuntimeError):  # the decoder's op runs on onnxruntime's pool: default
            package.sessions[M.DECODER].get_session_options().get_session_config_entry(
                NO_SPINNING[0]
            )


def test_manifest_errors(tiny_package, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{not json")
    array = tmp_path / "array"
    array.mkdir()
    (array / "manifest.json").write_text("[1, 2]")
    cases = {
        tmp_path / "missing": "not found",
        tmp_path / "file": "not a folder",
        tmp_path / "empty": "expected manifest.json",
        bad_json: "expected a JSON manifest",
        array: "expected a JSON object",
        _copy(tiny_package, tmp_path / "v1", lambda m: m.update(schema_version=1)): (
            "expected schema_version 2, got 1"
        ),
        _copy(tiny_package, tmp_path / "nokeys", lambda m: m.pop("decoder")): "decoder",
        _copy(tiny_package, tmp_path / "nostage", lambda m: m["stages"].pop("frame_scorer")): (
            "stages.frame_scorer"
        ),
        _copy(tiny_package, tmp_path / "nofile", skip=("decoder.onnx",)): "decoder.onnx",
        _copy(tiny_package, tmp_path / "nohd", lambda m: m["decoder"].pop("head_dim")): (
            "decoder.head_dim"
        ),
        _copy(tiny_package, tmp_path / "badchunk", lambda m: m["sampling"].update(chunk_size=5)): (
            "multiple of sampling.chunk_size"
        ),
    }
    for folder, expected in cases.items():
        with pytest.raises(PackageError) as info:
            read_manifest(folder)
        message = str(info.value)
        print(folder.name, "->", message)
        assert expected in message and "fix:" in message and "\n" not in message


def test_corrupt_graph_file(tiny_package, tmp_path):
    bad = _copy(tiny_package, tmp_path / "corrupt", skip=("frame_scorer.onnx",))
    (bad / "frame_scorer.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PackageError, match="frame_scorer.onnx"):
        load_package(bad)


def test_every_mismatch_in_one_error(tiny_package, tmp_path):
    def edit(manifest):
        stages = manifest["stages"]
        stages["clip_vision"]["inputs"][0]["name"] = "pixels"  # renamed input
        stages["frame_scorer"]["outputs"][0]["shape"].append(1)  # rank 2 -> 3
        stages["decoder"]["inputs"][1]["dtype"] = "int32"  # attention_mask is int64
        stages["video_projector"]["inputs"][0]["shape"][1] = 50  # static 196

    with pytest.raises(PackageError) as info:
        load_package(_copy(tiny_package, tmp_path / "bad", edit))
    message = str(info.value)
    print(message)
    assert "(5 mismatches" in message and "\n" not in message
    assert "clip_vision input 'pixels': expected in the graph" in message
    assert "clip_vision input 'pixel_values': in the graph, expected in the manifest" in message
    assert "frame_scorer output 'frame_scores': expected rank 3, got 2" in message
    assert "decoder input 'attention_mask': expected dtype int32, got int64" in message
    assert "video_projector input 'video_features' axis 1: expected 50, got 196" in message


def test_provider_errors(tiny_package):
    with pytest.raises(MvgptError, match="unknown provider 'tpu'"):
        load_package(tiny_package, provider="tpu")
    with pytest.raises(MvgptError, match="not in this onnxruntime build.*CPUExecutionProvider"):
        load_package(tiny_package, provider="tensorrt")
    with pytest.raises(MvgptError, match="threads"):
        load_package(tiny_package, threads=0)


def test_portable_fallback_without_the_library(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("MVGPT_OPS_LIBRARY", str(tmp_path / "absent.so"))
    package = load_package(tiny_package, threads=1)
    assert not package.custom_ops
    portable = [note.split()[0] for note in package.notes if "portable" in note]
    assert portable == ["video_mamba", "decoder"]
    assert all("not built" in note for note in package.notes)
    inputs = [i.name for i in package.sessions["video_mamba"].get_inputs()]
    assert inputs == ["pixel_values"]
    for stage, op in (("video_mamba", "SelectiveScan"), ("decoder", "GroupQueryAttention")):
        no_portable = _copy(
            tiny_package, tmp_path / f"no_portable_{stage}", lambda m, s=stage: m["stages"][s].pop(
                "portable_file")
        )  # fmt: skip
        with pytest.raises(KernelError, match=f"{stage} needs the {op} custom op.*no portable"):
            load_package(no_portable)


ARENA_SCRIPT = """
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
from mvgpt.runtime.sessions import session_options

model = Path(sys.argv[1]).read_bytes()
feeds = {"x": np.ones(1, np.float32), "shape": np.array([16 << 20], np.int64)}  # 64 MiB

def rss_mib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

def growth(options):
    for _ in range(2):
        ort.InferenceSession(model, options(), ["CPUExecutionProvider"]).run(None, feeds)
    new = ort.InferenceSession(model, options(), ["CPUExecutionProvider"])
    before = rss_mib()
    new.run(None, feeds)
    return rss_mib() - before

print(growth(ort.SessionOptions), growth(session_options))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads RSS from /proc")
def test_sessions_share_one_cpu_arena(tmp_path):
    """A new session's first run of a graph with a 64 MiB intermediate, after two other sessions
    ran it, in a fresh process: with onnxruntime's default options it allocates its own memory
    (the control: this test can fail), with the runtime's it runs in memory the process holds."""
    import subprocess
    import sys

    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["big"]),  # (16M,) float32
        helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    graph = helper.make_graph(nodes, "big_intermediate", inputs, [output])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", M.OPSET)], ir_version=M.IR_VERSION
    )
    (tmp_path / "big.onnx").write_bytes(model.SerializeToString())
    run = subprocess.run(
        [sys.executable, "-c", ARENA_SCRIPT, str(tmp_path / "big.onnx")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    own, shared = map(float, run.stdout.split()[-2:])
    print(
        f"RSS growth of a new session's run: default options {own:.0f} MiB, runtime's {shared:.0f}"
    )
    assert own > 32 and shared < 16


def test_full_range_int8_package_gets_a_note_only_on_cpus_that_saturate(tmp_path):
    from mvgpt.runtime.package import cpu_flags, int8_notes

    old = {M.K_QUANTIZATION: {M.Q_STAGES: {M.DECODER: {M.Q_METHOD: M.INT8_FULL_RANGE}}}}
    new = {M.K_QUANTIZATION: {M.Q_STAGES: {M.DECODER: {M.Q_METHOD: "int8_dynamic_matmul_7bit"}}}}
    avx2, vnni = {"sse2", "avx2", "fma"}, {"avx2", "fma", "avx512f", "avx512_vnni"}
    notes = int8_notes(old, "cpu", avx2)
    print(notes)
    assert len(notes) == 1 and "decoder" in notes[0] and "re-export" in notes[0]
    assert int8_notes(old, "cpu", vnni) == [] and int8_notes(old, "cpu", {"avx2", "avx_vnni"}) == []
    assert int8_notes(new, "cpu", avx2) == [] and int8_notes({}, "cpu", avx2) == []
    assert int8_notes(old, "cpu", {"neon"}) == []  # not x86: onnxruntime's ARM kernels widen
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "absent")) is None
