"""The native runtime on video files and live streams against the Python runtime: video files
(mp4v, MJPG, XVID; short clips padded, a single frame, a long clip whose gaps are skipped by
seeking, a rotation tag) decoded and sampled to the same frames, so bit-identical visual
embeddings and the same token ids; the built-in trained model's answers to its sample video from
mvgpt-cli equal mvgpt-run's (and are right); a stream session (mvgpt_stream_*) keeping the same
frames and giving the same answers as runtime/stream.py's StreamSession on the same pushes, in the
caller's thread and in the background; providers; and bad input answered with a status or an exit
code and one line."""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvgpt.runtime.default_model import builtin_package, builtin_sample
from mvgpt.runtime.pipeline import Pipeline
from mvgpt.runtime.stream import StreamSession
from tests.native import libmvgpt
from tests.videos import decode_all, make_video, set_mp4_rotation

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MVGPT_NATIVE_CLI") or ROOT / "runtime" / "native" / "bin" / "mvgpt-cli")
# (name, fourcc, extension, width, height, fps, frames): short ones padded, a single frame, and a
# 2-minute clip whose sampled frames are 80 frames apart (seeking: runtime/video.py SEEK_MIN_GAP)
VIDEOS = [
    ("mp4v", "mp4v", "mp4", 260, 188, 20, 194),
    ("long", "mp4v", "mp4", 320, 240, 10, 1200),
    ("mjpg", "MJPG", "avi", 200, 150, 15, 5),
    ("xvid", "XVID", "avi", 161, 121, 25, 90),
    ("still", "mp4v", "mp4", 176, 144, 30, 1),
]


@pytest.fixture(scope="module")
def lib():
    lib = libmvgpt.declare_model_api(libmvgpt.load())
    if not lib.mvgpt_video_files_supported():
        why = (
            "libmvgpt was built without OpenCV's C++ API (no video files); fix: install "
            "libopencv-videoio-dev and rerun the set-up command"
        )
        if os.environ.get("CI"):  # the set-up command installs it: CI must have it
            pytest.fail(why)
        pytest.skip(why)
    return lib


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    out = {
        name: make_video(folder / f"{name}.{ext}", fps=fps, size=(width, height), codec=fourcc,
                         num_frames=count)
        for name, fourcc, ext, width, height, fps, count in VIDEOS
    }  # fmt: skip
    # landscape pixels tagged "rotate N" (a phone's portrait video): both must turn them upright
    for degrees in (90, 180, 270):
        path = make_video(folder / f"rotated{degrees}.mp4", seconds=2, fps=10)
        out[f"rotated{degrees}"] = set_mp4_rotation(path, degrees)
    return out


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_video_files_encode_and_answer_as_the_python_runtime(lib, tiny_package, videos):
    """One thread each (the same summation order): the embeddings agree to float32 rounding, so
    every sampled frame decoded to the same pixels; then the same greedy ids."""
    native = libmvgpt.Model(lib, tiny_package, threads=1)
    python = Pipeline.load(tiny_package, threads=1)
    try:
        for name, path in videos.items():
            encoding = native.encode_video(path)
            want = python.encode(path)
            got = native.visual(encoding)
            sampled, selected = native.frames(encoding)
            diff = float(np.abs(got - want.visual).max())
            print(name, "sampled", sampled, "max |diff|", diff)
            assert got.shape == want.visual.shape and diff <= 1e-6
            assert tuple(sampled) == want.frame_indices and tuple(selected) == want.selected_frames
            for options in ({}, {"repetition_penalty": 1.5}):
                answer = native.answer(encoding, "What happens?", max_new_tokens=8, **options)
                expected = python.answer(want, "What happens?", max_new_tokens=8, **options)
                print(" ", options, answer["token_ids"], list(expected.token_ids))
                assert answer["token_ids"] == list(expected.token_ids)
            assert answer["seconds"]["decode_video"] == 0  # (reported with the first answer)
            native.free_encoding(encoding)
        assert max(native.frames(native.encode_video(videos["long"]))[0]) > 1000  # (it seeked)
    finally:
        native.close()


@pytest.mark.parametrize("penalty", [None, 1.3])
def test_builtin_model_answers_its_sample_video_as_mvgpt_run(lib, penalty):
    sample = builtin_sample()
    args = [sample.video, "--json", "--threads", 2]
    args += ["--repetition-penalty", penalty] if penalty else []
    for q in sample.questions:
        args += ["--question", q["question"]]
    run = _cli(*args)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    pipeline = Pipeline.load(builtin_package(), threads=2)
    encoding = pipeline.encode(sample.video)
    options = {"repetition_penalty": penalty} if penalty else {}
    for record, q in zip(records, sample.questions, strict=True):
        want = pipeline.answer(encoding, q["question"], **options)
        print(q["question"], "->", record["answer"], record["token_ids"], list(want.token_ids))
        assert record["token_ids"] == list(want.token_ids) and record["answer"] == want.text
        assert record["frame_indices"] == list(want.frame_indices)
        assert record["answer"] == q["answer"]  # the trained model is right about its sample
    assert records[0]["seconds"]["decode_video"] > 0


def test_bad_video_files(lib, tiny_package, tmp_path):
    native = libmvgpt.Model(lib, tiny_package, threads=1)
    empty, garbage, folder = tmp_path / "empty.mp4", tmp_path / "garbage.mp4", tmp_path / "dir"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a video at all " * 100)
    folder.mkdir()
    cases = [
        (tmp_path / "none.mp4", libmvgpt.NOT_FOUND, "video not found"),
        (folder, libmvgpt.INVALID_ARGUMENT, "video path is a folder"),
        (empty, libmvgpt.BAD_FORMAT, "video file is empty"),
        (garbage, libmvgpt.BAD_FORMAT, "cannot open"),
    ]
    try:
        for path, status, words in cases:
            with pytest.raises(libmvgpt.NativeError) as info:
                native.encode_video(path)
            print(path.name, "->", info.value.status, info.value.message)
            assert info.value.status == status and words in info.value.message
            assert "\n" not in info.value.message
            run = _cli(path, "Why?", "--model", tiny_package)
            print("  cli:", run.returncode, run.stderr.strip())
            assert run.returncode == 1 and words in run.stderr and run.stderr.count("\n") == 1
            assert run.stdout == ""
        out = ctypes.c_void_p()
        assert lib.mvgpt_encode_video(native.handle, None, ctypes.byref(out)) == 1 and not out
        assert lib.mvgpt_encode_video(None, b"x.mp4", ctypes.byref(out)) == 1 and not out
    finally:
        native.close()


def test_providers(lib, tiny_package):
    import onnxruntime as ort

    with pytest.raises(libmvgpt.NativeError) as info:
        libmvgpt.Model(lib, tiny_package, provider="tpu")
    print(info.value.message)
    assert (
        info.value.status == libmvgpt.INVALID_ARGUMENT
        and "expected cpu or cuda" in info.value.message
    )
    libmvgpt.Model(lib, tiny_package, threads=1, provider="cpu").close()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip(
            "this onnxruntime has the CUDA provider: benchmarks/gpu_check.sh tests it on a GPU"
        )
    with pytest.raises(libmvgpt.NativeError) as info:
        libmvgpt.Model(lib, tiny_package, provider="cuda")
    print(info.value.message)
    assert (
        info.value.status == libmvgpt.UNSUPPORTED and "CPUExecutionProvider" in info.value.message
    )


# ---------------------------------------------------------------------- live video


STREAM_SECONDS = 19.5  # three questions (every 6 s), the last after the window slid


@pytest.fixture(scope="module")
def sample_pushes():
    """The built-in model's sample video played again and again until STREAM_SECONDS have passed
    (the 16 s window fills and slides), as (RGB frame, timestamp), with its questions."""
    sample = builtin_sample()
    frames = decode_all(sample.video)
    fps = cv2.VideoCapture(str(sample.video)).get(cv2.CAP_PROP_FPS)
    assert fps > 0 and frames, sample.video
    count = math.ceil(STREAM_SECONDS * fps)
    pushes = [(frames[i % len(frames)], round(i / fps, 4)) for i in range(count)]
    return pushes, [q["question"] for q in sample.questions]


def test_stream_answers_as_the_python_stream(lib, sample_pushes):
    """background off on both sides: the same frames kept, the same windows, the same answers,
    part-way (fewer than 16 kept frames: padded), with a full window and with a sliding one."""
    pushes, questions = sample_pushes
    native = libmvgpt.Model(lib, builtin_package(), threads=2)
    python = StreamSession(Pipeline.load(builtin_package(), threads=2), background=False)
    stream = libmvgpt.Stream(native, background=0)
    try:
        asked = 0
        for frame, timestamp in pushes:
            assert stream.push(frame, timestamp) == python.push(frame, timestamp)
            if timestamp >= 6.0 * (asked + 1):
                asked += 1
                for question, options in zip(
                    questions, ({}, {"repetition_penalty": 1.3}) * 2, strict=True
                ):
                    got = stream.answer(question, **options)
                    want = python.answer(question, **options)
                    print(timestamp, got["window"], question, got["answer"], got["token_ids"])
                    assert got["token_ids"] == list(want.answer.token_ids)
                    assert got["answer"] == want.answer.text
                    assert got["frame_timestamps"] == list(want.frame_timestamps)
                    assert got["window"] == list(want.window)
                    assert got["frame_indices"] == list(want.answer.frame_indices)
                    assert got["selected_frames"] == list(want.answer.selected_frames)
                    assert got["kept"] == python.kept and got["frames"] == python._pushed
        assert asked == math.floor(pushes[-1][1] / 6.0) == 3 and got["dropped"] == 0
        assert got["window"][0] > 0  # the window slid
    finally:
        stream.close()
        native.close()


def test_background_stream_answers_as_its_synchronous_run(lib, sample_pushes):
    pushes, questions = sample_pushes
    native = libmvgpt.Model(lib, builtin_package(), threads=2)
    sync = libmvgpt.Stream(native, background=0)
    for frame, timestamp in pushes:
        sync.push(frame, timestamp)
    want = [sync.answer(q) for q in questions]
    sync.close()
    live = libmvgpt.Stream(native, background=1, refresh_s=0.0, max_pending=1000)
    try:
        for frame, timestamp in pushes:
            live.push(frame, timestamp)
        assert live.wait_idle(300.0)
        for question, expected in zip(questions, want, strict=True):
            heard: list[str] = []
            got = live.answer(question, on_text=lambda t, h=heard: h.append(t) or True)
            print(question, got["answer"], got["window"], got["prefix_seconds"])
            assert got["token_ids"] == expected["token_ids"]
            assert got["frame_timestamps"] == expected["frame_timestamps"]
            assert "".join(heard).strip() == got["answer"]
            assert got["prefix_seconds"]["prefix_prefill"] > 0 and got["prefix_age_s"] >= 0
        fresh = live.answer(questions[0], fresh=True)  # nothing new since: the same prefix
        assert fresh["token_ids"] == want[0]["token_ids"]
    finally:
        live.close()
        native.close()


def test_stream_bad_input(lib, tiny_package):
    native = libmvgpt.Model(lib, tiny_package, threads=1)
    stream = libmvgpt.Stream(native, background=0)
    frame = np.zeros((8, 8, 3), np.uint8)
    try:
        with pytest.raises(libmvgpt.NativeError) as info:
            stream.answer("Why?")
        assert info.value.status == libmvgpt.INVALID_ARGUMENT
        assert "no frame has been kept yet" in info.value.message
        assert stream.push(frame, 1.0)
        for timestamp, words in ((1.0, "expected a finite time after"), (float("nan"), "finite")):
            with pytest.raises(libmvgpt.NativeError) as info:
                stream.push(frame, timestamp)
            print(info.value.message)
            assert info.value.status == libmvgpt.INVALID_ARGUMENT and words in info.value.message
        with pytest.raises(libmvgpt.NativeError) as info:
            stream.answer("   ")
        assert "empty question" in info.value.message
        out, kept = ctypes.c_void_p(), ctypes.c_int(7)
        push = lib.mvgpt_stream_push
        assert push(stream.handle, None, 8, 8, 2.0, ctypes.byref(kept)) == 1 and kept.value == 0
        assert push(stream.handle, frame.ctypes.data, 0, 8, 2.0, None) == 1
        assert push(None, frame.ctypes.data, 8, 8, 2.0, None) == 1
        assert lib.mvgpt_stream_wait_idle(stream.handle, -1.0, None) == 1
        for params, words in (
            ({"window_s": 0.5}, "stream window"),
            ({"refresh_s": float("nan")}, "NaN"),
        ):
            with pytest.raises(libmvgpt.NativeError) as info:
                libmvgpt.Stream(native, **params)
            print(info.value.message)
            assert info.value.status == libmvgpt.INVALID_ARGUMENT and words in info.value.message
        assert lib.mvgpt_stream_open(None, None, ctypes.byref(out)) == 1 and not out
        lib.mvgpt_stream_free(None)
        assert stream.answer("Why?", max_new_tokens=2)["frames"] == 1  # still answers
    finally:
        stream.close()
        native.close()
