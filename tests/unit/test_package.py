"""Loading a package: manifest errors, provider errors, the graph/manifest check that reports
every mismatch in one PackageError, the portable video_mamba fallback, and the contract's
parts a runtime must take from the manifest (tensors by role, session config, custom ops,
graph metadata, prompt template)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import KernelError, MvgptError, PackageError
from mvgpt.runtime.manifest import NO_SPINNING
from mvgpt.runtime.package import load_package, read_manifest


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
            f"expected schema_version {M.SCHEMA_VERSION}, got 1"
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
        _copy(tiny_package, tmp_path / "notemplate", lambda m: m["prompt"].pop("template")): (
            "prompt.template (str)"
        ),
        _copy(
            tiny_package,
            tmp_path / "badtemplate",
            lambda m: m["prompt"].update(template="{question} {system} {images}"),
        ): "expected {system}, {images}, {question} once each, in that order",
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


def test_a_provider_that_falls_back_to_the_cpu_is_an_error(tiny_package, monkeypatch):
    """onnxruntime-gpu whose CUDA libraries do not load: the CUDA provider is listed, the session
    silently runs on the CPU. Simulated with this CPU build (it warns and runs a session asked for
    an absent provider on the CPU): the load stops with the reason preload_dlls printed."""
    from mvgpt.runtime import package as P

    available = P.ort.get_available_providers()
    monkeypatch.setattr(
        P.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    calls = []

    def preload_dlls():
        calls.append(1)
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(P.ort, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(P, "_preloaded", {})
    for _ in range(2):
        with pytest.raises(MvgptError) as e:
            load_package(tiny_package, provider="cuda")
        message = str(e.value)
        print(message)
        assert "clip_vision: provider 'cuda' (CUDAExecutionProvider) did not start" in message
        assert "fell back to CPUExecutionProvider (Failed to load libcudnn.so.9" in message
        assert "\n" not in message and "fix: install the CUDA and cuDNN libraries" in message
    assert calls == [1]  # once per process


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


def test_every_role_problem_in_one_error(tiny_package, tmp_path):
    """Tensors are found by role: a role missing, unknown or given twice, a cache tensor without
    its layer, and a bad custom op or session config are all named in one PackageError before
    any session is opened."""

    def edit(manifest):
        stages = manifest["stages"]
        stages["clip_vision"]["inputs"][0]["role"] = "pixels"  # unknown (pixel_values missing)
        scorer = stages["frame_scorer"]["outputs"]
        scorer.append(dict(scorer[0], name="again"))  # frame_scores twice
        next(t for t in stages["decoder"]["inputs"] if t.get("layer") == 1).pop(
            "layer"
        )  # a cache tensor without its layer: layer 1 lacks it
        stages["video_mamba"]["custom_op"] = {"domain": "mvgpt", "op_type": "Conv"}
        stages["embed_tokens"]["session_config"] = {"session.intra_op.allow_spinning": 0}

    with pytest.raises(PackageError) as info:
        load_package(_copy(tiny_package, tmp_path / "roles", edit))
    message = str(info.value)
    print(message)
    assert "7 problems" in message and "\n" not in message and "fix:" in message
    for part in (
        "clip_vision inputs 'pixel_values': expected a role among pixel_values, got 'pixels'",
        "clip_vision inputs: expected a tensor with role 'pixel_values', got none",
        "frame_scorer outputs: expected one tensor with role 'frame_scores', got two",
        "decoder inputs 'past_key_values.1.key': expected a layer in [0, 2), got None",
        "decoder inputs: expected a tensor with role 'past_key' for layer 1, got none",
        "video_mamba custom_op: expected null or {domain: mvgpt, op_type: one of",
        "embed_tokens session_config: expected an object of string keys and values",
    ):
        assert part in message


def _rename(graph: Path, out: Path, renames: dict[str, str]) -> None:
    """Copy an .onnx file with graph tensors renamed (inputs, outputs, node references)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    g = model.graph
    for value in [*g.input, *g.output]:
        value.name = renames.get(value.name, value.name)
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    out.write_bytes(model.SerializeToString())


def test_graph_names_come_from_the_manifest(tiny_package, tmp_path):
    """Rename tensors in the graphs and in the manifest alike (a CLIP input, the decoder's
    logits and one layer's cache): the runtime binds them by role and answers the same ids."""
    import numpy as np

    from mvgpt.runtime.pipeline import Pipeline

    renames = {
        "clip_vision": {"pixel_values": "frames"},
        "decoder": {"logits": "scores", "past_key_values.1.value": "cache_v1_in",
                    "present.1.value": "cache_v1_out"},
    }  # fmt: skip

    def edit(manifest):
        for stage, names in renames.items():
            entry = manifest["stages"][stage]
            for tensor in [*entry["inputs"], *entry["outputs"]]:
                tensor["name"] = names.get(tensor["name"], tensor["name"])

    files = tuple(f"{stage}.onnx{data}" for stage in renames for data in ("", ".data"))
    renamed = _copy(tiny_package, tmp_path / "renamed", edit, skip=files)
    for stage, names in renames.items():  # (the data copied: onnxruntime follows no link out)
        _rename(tiny_package / f"{stage}.onnx", renamed / f"{stage}.onnx", names)
        shutil.copy(tiny_package / f"{stage}.onnx.data", renamed / f"{stage}.onnx.data")
    video = np.random.default_rng(0).integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    answers = []
    for folder in (tiny_package, renamed):
        pipeline = Pipeline.load(folder, threads=1)
        answers.append(pipeline.answer(video, "What happens?", max_new_tokens=6).token_ids)
    print(answers)
    assert answers[0] == answers[1] and len(answers[0]) > 0
    assert [i.name for i in pipeline.package.sessions["clip_vision"].get_inputs()] == ["frames"]


def test_session_config_comes_from_the_manifest(tiny_package, tmp_path):
    """The entries of a stage's session_config are what its session gets, on any stage."""

    def edit(manifest):
        manifest["stages"]["clip_vision"]["session_config"] = dict([NO_SPINNING])
        manifest["stages"]["video_mamba"]["session_config"] = {}

    package = load_package(_copy(tiny_package, tmp_path / "config", edit), threads=1)
    options = package.sessions["clip_vision"].get_session_options()
    assert options.get_session_config_entry(NO_SPINNING[0]) == "0"
    with pytest.raises(RuntimeError):  # not set: onnxruntime raises for an absent key
        package.sessions["video_mamba"].get_session_options().get_session_config_entry(
            NO_SPINNING[0]
        )


def test_graph_metadata_is_checked(tiny_package, tmp_path):
    """Every graph says which stage it is and its schema version; a graph put in another
    stage's place, or stamped by another schema, is refused with what it says."""
    import onnx

    from mvgpt.exporter.graphs import stamp_graph

    for name in ("clip_vision.onnx", "decoder_portable.onnx"):
        model = onnx.load(str(tiny_package / name), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        print(name, props)
        assert props[M.G_SCHEMA_VERSION] == str(M.SCHEMA_VERSION)
        assert props[M.G_STAGE] == name.split(".")[0].removesuffix("_portable")
        assert props[M.G_VARIANT] == ("portable" if "portable" in name else "main")

    swapped = _copy(tiny_package, tmp_path / "swapped", skip=("frame_scorer.onnx",))
    model = onnx.load(str(tiny_package / "frame_scorer.onnx"), load_external_data=False)
    (swapped / "frame_scorer.onnx").write_bytes(model.SerializeToString())
    stamp_graph(swapped / "frame_scorer.onnx", "image_projector", "main")
    old = onnx.load(str(swapped / "frame_scorer.onnx"))
    old.metadata_props[1].value = "2"  # (stage, schema version, variant)
    (swapped / "frame_scorer.onnx").write_bytes(old.SerializeToString())
    with pytest.raises(PackageError) as info:
        load_package(swapped)
    message = str(info.value)
    print(message)
    assert "(2 mismatches" in message
    assert "frame_scorer graph metadata mvgpt.stage: expected 'frame_scorer', got " in message
    assert "'image_projector'" in message
    assert f"mvgpt.schema_version: expected '{M.SCHEMA_VERSION}', got '2'" in message


def test_prompt_template_comes_from_the_manifest(tiny_package, tmp_path):
    from mvgpt.runtime.pipeline import Pipeline

    def edit(manifest):
        manifest["prompt"]["template"] = "{system}|{images}|{question}|"
        manifest["prompt"]["system"] = "Be brief."

    custom = Pipeline.load(_copy(tiny_package, tmp_path / "template", edit), threads=1)
    tokenizer = custom.tokenizer
    ids = custom.prompt_ids("Why {system}?")
    prefix, suffix = custom.split_prompt(ids)
    print(tokenizer.decode(prefix.tolist()), "/", tokenizer.decode(suffix.tolist()))
    assert tokenizer.decode(prefix.tolist()) == "Be brief.|"
    assert tokenizer.decode(suffix.tolist()) == "|Why {system}?|"
    assert int((ids == custom.prompt["image_token_index"]).sum()) == 8


def test_the_format_document_names_every_key_and_role():
    """runtime/PACKAGE.md is the contract a native runtime is written from: every manifest key,
    stage-entry key, prompt key, metadata key, role and stage name of manifest.py is in it."""
    doc = (Path(M.__file__).parent / "PACKAGE.md").read_text()
    prefixes = ("K_", "S_", "P_", "PR_", "G_", "R_", "Q_", "RESIZE_", "INT8_")
    names = {
        value
        for key, value in vars(M).items()
        if key.startswith(prefixes) and isinstance(value, str)
    }
    names |= set(M.STAGES) | {M.MANIFEST_FILE, M.TOKENIZER_FILE, *M.NO_SPINNING}
    missing = sorted(n for n in names if f"`{n}`" not in doc and f'"{n}"' not in doc)
    print(len(names), "names;", "missing:", missing)
    assert not missing
    assert f"(schema {M.SCHEMA_VERSION})" in doc
