"""The native runtime (libmvgpt through its C API, and mvgpt-cli) against the Python runtime on
the same packages: bit-identical visual embeddings from frames of many sizes (both streams'
resizes are exact), the same token ids for greedy and greedy-with-repetition-penalty answers on
the built-in trained model and the tiny random package, with the custom-op graphs and with the
portable ones, the same streamed pieces; several questions about one encoding; and bad input at
the C API and the command line answered with a status or an exit code and one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mvgpt.runtime.default_model import builtin_package
from mvgpt.runtime.pipeline import Pipeline
from mvgpt.runtime.video import read_frames
from tests.native import libmvgpt

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MVGPT_NATIVE_CLI") or ROOT / "runtime" / "native" / "bin" / "mvgpt-cli")
SIZES = [(16, 120, 160), (5, 481, 639), (20, 448, 448), (9, 100, 37), (16, 224, 224), (30, 37, 300)]


@pytest.fixture(scope="module")
def lib():
    return libmvgpt.load()


@pytest.fixture(scope="module")
def sample():
    """The built-in model's sample video, decoded by the Python runtime, and its questions."""
    folder = builtin_package().parent
    frames, _ = read_frames(folder / "sample.mp4", 16)
    questions = [
        q["question"] for q in json.loads((folder / "sample.json").read_text())["questions"]
    ]
    return frames, questions


def _packages(tiny_package) -> dict[str, Path]:
    return {"builtin": builtin_package(), "tiny": Path(tiny_package)}


@pytest.mark.parametrize("name", ["builtin", "tiny"])
def test_visual_embeddings_are_the_python_runtimes(lib, tiny_package, name):
    """One thread each (the same summation order): the embeddings agree to float32 rounding, which
    any single pixel of either resize coming out differently would exceed."""
    package = _packages(tiny_package)[name]
    native = libmvgpt.Model(lib, package, threads=1)
    python = Pipeline.load(package, threads=1)
    rng = np.random.default_rng(3)
    try:
        for shape in SIZES:
            frames = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            encoding = native.encode(frames)
            want = python.encode(frames)
            got = native.visual(encoding)
            sampled, selected = native.frames(encoding)
            diff = float(np.abs(got - want.visual).max())
            print(name, shape, "max |diff|", diff, "selected", selected)
            assert got.shape == want.visual.shape and diff <= 1e-6
            assert tuple(sampled) == want.frame_indices and tuple(selected) == want.selected_frames
            native.free_encoding(encoding)
    finally:
        native.close()


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _python_answers(package, frames, questions, threads=2, **options) -> list:
    pipeline = Pipeline.load(package, threads=threads)
    encoding = pipeline.encode(frames)
    return [pipeline.answer(encoding, q, **options) for q in questions]


@pytest.mark.parametrize("penalty", [None, 1.3])
def test_builtin_model_answers_as_the_python_runtime(sample, tmp_path, penalty):
    frames, questions = sample
    raw = tmp_path / "frames.rgb"
    frames.tofile(raw)
    args = ["--frames", raw, "--shape", ",".join(map(str, frames.shape[:3])), "--json"]
    args += ["--threads", 2] + (["--repetition-penalty", penalty] if penalty else [])
    for q in questions:
        args += ["--question", q]
    run = _cli(*args)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    options = {"repetition_penalty": penalty} if penalty else {}
    want = _python_answers(builtin_package(), frames, questions, **options)
    for record, answer in zip(records, want, strict=True):
        print(record["question"], "->", record["answer"], record["token_ids"], answer.token_ids)
        assert record["token_ids"] == list(answer.token_ids) and record["answer"] == answer.text
        assert record["selected_frames"] == list(answer.selected_frames)
        assert record["custom_ops"] is True
    assert [r["encoding_reused"] for r in records] == [False, True, True, True]
    assert records[0]["seconds"]["clip_vision"] > 0 and records[1]["seconds"]["clip_vision"] == 0


@pytest.mark.parametrize("portable", [False, True])
def test_tiny_package_answers_as_the_python_runtime(
    lib, tiny_package, tmp_path, portable, monkeypatch
):
    """Long random answers (16 tokens) on random frames, greedy and with a repetition penalty; the
    custom-op graphs, then the portable graphs on both sides."""
    if portable:
        monkeypatch.setenv("MVGPT_OPS_LIBRARY", str(tmp_path / "absent.so"))
    native = libmvgpt.Model(lib, tiny_package, threads=2, ops="" if portable else None)
    assert native.custom_ops is not portable
    pipeline = Pipeline.load(tiny_package, threads=2)
    assert pipeline.package.custom_ops is not portable
    rng = np.random.default_rng(11)
    questions = ["What happens in this video?", "Describe the colours, then count: one, two.",
                 "日本語で説明してください。"]  # fmt: skip
    try:
        for shape in SIZES[:3]:
            frames = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            encoding, want_encoding = native.encode(frames), pipeline.encode(frames)
            for question in questions:
                for options in ({}, {"repetition_penalty": 1.5}):
                    pieces: list[str] = []
                    got = native.answer(
                        encoding, question, on_text=lambda t, heard=pieces: heard.append(t) or True,
                        max_new_tokens=16, **options,
                    )  # fmt: skip
                    python_pieces: list[str] = []
                    want = pipeline.answer(
                        want_encoding, question, max_new_tokens=16, on_text=python_pieces.append,
                        **options,
                    )  # fmt: skip
                    print(shape, question[:12], options, got["token_ids"], list(want.token_ids))
                    assert got["token_ids"] == list(want.token_ids) and got["answer"] == want.text
                    assert pieces == python_pieces
            native.free_encoding(encoding)
    finally:
        native.close()


def test_a_callback_can_stop_an_answer(lib, tiny_package):
    native = libmvgpt.Model(lib, tiny_package, threads=2)
    encoding = native.encode(np.full((4, 32, 32, 3), 100, np.uint8))
    full = native.answer(encoding, "What happens?", max_new_tokens=12)
    heard: list[str] = []
    stopped = native.answer(
        encoding, "What happens?", on_text=lambda t: heard.append(t) or False, max_new_tokens=12
    )
    print(full["token_ids"], stopped["token_ids"], heard)
    assert len(heard) == 1 and len(stopped["token_ids"]) < len(full["token_ids"])
    assert stopped["token_ids"] == full["token_ids"][: len(stopped["token_ids"])]
    native.close()


def test_bad_input_at_the_c_api(lib, tiny_package, tmp_path):
    import ctypes

    lib = libmvgpt.declare_model_api(lib)
    out = ctypes.c_void_p()
    seen = []

    def expect(status: int, want: int, words: str) -> None:
        message = lib.mvgpt_last_error().decode()
        seen.append(message)
        print(status, message)
        assert status == want and words in message and "\n" not in message
        assert not out  # nothing was made

    load = lib.mvgpt_model_load
    expect(load(None, None, ctypes.byref(out)), libmvgpt.INVALID_ARGUMENT, "package: expected")
    expect(load(b"/no/such", None, ctypes.byref(out)), libmvgpt.NOT_FOUND, "manifest.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"schema_version": 2}')
    expect(load(str(broken).encode(), None, ctypes.byref(out)), libmvgpt.BAD_FORMAT,
           "expected schema_version 3")  # fmt: skip
    native = libmvgpt.Model(lib, tiny_package, threads=1)
    model, frames = native.handle, np.zeros((2, 8, 8, 3), np.uint8)
    pixels = frames.ctypes.data
    for args, words in (
        ((None, pixels, 2, 8, 8), "model: expected a pointer"),
        ((model, None, 2, 8, 8), "rgb: expected a pointer"),
        ((model, pixels, 0, 8, 8), "expected (num_frames >= 1"),
        ((model, pixels, 2, -8, 8), "expected (num_frames >= 1"),
        ((model, pixels, 2, 1 << 14, 1 << 14), "at most 2^26"),
    ):
        expect(lib.mvgpt_encode_frames(*args, ctypes.byref(out)), libmvgpt.INVALID_ARGUMENT, words)
    good = native.encode(frames)
    none = libmvgpt.TEXT_CALLBACK()
    long_question = ("why " * 40000).encode()  # more positions than the decoder has

    def ask(model, encoding, question, **options) -> int:
        params = lib.mvgpt_answer_default_params()
        for key, value in options.items():
            setattr(params, key, value)
        return lib.mvgpt_answer_question(
            model, encoding, question, params, none, None, ctypes.byref(out)
        )

    for args, options, words in (
        ((None, good, b"Why?"), {}, "model: expected a pointer"),
        ((model, None, b"Why?"), {}, "encoding: expected a pointer"),
        ((model, good, None), {}, "question: expected a pointer"),
        ((model, good, b"   "), {}, "empty question"),
        ((model, good, b"caf\xe9?"), {}, "expected UTF-8"),
        ((model, good, long_question), {}, "prompt too long"),
        ((model, good, b"Why?"), {"max_new_tokens": -1}, "max_new_tokens"),
        ((model, good, b"Why?"), {"top_p": 2.0}, "top_p in (0, 1]"),
    ):
        expect(ask(*args, **options), libmvgpt.INVALID_ARGUMENT, words)
    for free in (lib.mvgpt_model_free, lib.mvgpt_encoding_free, lib.mvgpt_answer_free):
        free(None)  # no-ops, like free(NULL)
    assert lib.mvgpt_answer_text(None) == b"" and lib.mvgpt_model_custom_ops(None) == 0
    assert ask(model, good, b"Why?", max_new_tokens=2) == libmvgpt.OK  # still answers
    assert lib.mvgpt_last_error() == b""
    lib.mvgpt_answer_free(out)
    native.free_encoding(good)
    native.close()


def test_cli_bad_input_exits_1_with_one_line(tmp_path, tiny_package):
    raw = tmp_path / "f.rgb"
    np.zeros((3, 20, 30, 3), np.uint8).tofile(raw)
    cases = {
        (): "expected a video file or --frames FILE --shape F,H,W",
        ("Why?",): "expected a question",
        ("--frames", raw, "--shape", "3,20,31", "Why?"): "expected exactly 5580 bytes",
        ("--frames", raw, "--shape", "3x20", "Why?"): "--shape: expected F,H,W",
        (
            "--frames",
            tmp_path / "none.rgb",
            "--shape",
            "3,20,30",
            "Why?",
        ): "expected a readable file",
        ("--frames", raw, "--shape", "3,20,30", "  "): "empty question",
        ("--frames", raw, "--shape", "3,20,30", "--model", tmp_path, "Why?"): "not a model package",
        ("--frames", raw, "--shape", "3,20,30", "--max-new-tokens", "0", "Why?"): "integer >= 1",
        ("--bogus",): "unknown option --bogus",
    }
    for args, words in cases.items():
        run = _cli(*args)
        print(args[-1] if args else "", "->", run.returncode, run.stderr.strip())
        assert run.returncode == 1 and words in run.stderr
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and run.stdout == ""
    run = _cli("--frames", raw, "--shape", "3,20,30", "--model", tiny_package, "--max-new-tokens",
               "4", "Why?")  # fmt: skip
    assert run.returncode == 0 and run.stdout.endswith("\n"), run.stderr


def _copy_package(source: Path, dest: Path, edit) -> Path:
    """Link a package's files into ``dest`` and write its manifest edited by ``edit``."""
    dest.mkdir()
    for item in source.iterdir():
        if item.name != "manifest.json":
            (dest / item.name).symlink_to(item)
    manifest = json.loads((source / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_bad_packages_and_a_foreign_encoding(lib, tiny_package, tmp_path):
    def set_(path: str, value):
        def edit(manifest):
            *parents, key = path.split(".")
            node = manifest
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(key) if isinstance(node, list) else key] = value

        return edit

    cases = {
        "noplaceholder": (set_("prompt.image_placeholder", ""), "prompt.image_placeholder"),
        "toptype": (set_("generation.top_k", "many"), "values of the types"),
        "layers": (set_("decoder.num_hidden_layers", 1e20), "decoder.num_hidden_layers"),
        "template": (set_("prompt.template", "{system}{images}{question}{question}"), "once each"),
        "keep": (set_("sampling.num_select_k_frames_in_chunk", 99), "<= chunk_size"),
        "axis": (set_("stages.clip_vision.inputs.0.shape.2", 225), "axis 2: expected 225, got 224"),
        "role": (set_("stages.decoder.outputs.0.role", "scores"), "expected a known role"),
    }
    for name, (edit, words) in cases.items():
        folder = _copy_package(Path(tiny_package), tmp_path / name, edit)
        with pytest.raises(libmvgpt.NativeError) as info:
            libmvgpt.Model(lib, folder, threads=1)
        print(name, "->", info.value.message[:300])
        assert info.value.status == libmvgpt.BAD_FORMAT and words in info.value.message
        assert "\n" not in info.value.message
    # a null sampling value is the Python runtime's default, not an error
    nulls = _copy_package(Path(tiny_package), tmp_path / "nulls", set_("generation.top_k", None))
    first, second = (
        libmvgpt.Model(lib, nulls, threads=1),
        libmvgpt.Model(lib, tiny_package, threads=1),
    )
    encoding = first.encode(np.zeros((2, 16, 16, 3), np.uint8))
    assert first.answer(encoding, "Why?", max_new_tokens=2)["token_ids"]
    with pytest.raises(libmvgpt.NativeError) as info:  # its kept KV cache is another model's
        second.answer(encoding, "Why?", max_new_tokens=2)
    print(info.value.message)
    assert (
        info.value.status == libmvgpt.INVALID_ARGUMENT and "another model's" in info.value.message
    )
    first.free_encoding(encoding)
    first.close()
    second.close()
