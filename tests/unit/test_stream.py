"""Live video (runtime/stream.py): a StreamSession's answer equals Pipeline.answer on the same
frames (the window's kept frames as an array; a whole file when the window holds it), in the
caller's thread and in the background; the window stays bounded; bad frames and timestamps give
one clear error; ``mvgpt-run --stream`` answers on a file played in real time and fails cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvgpt.runtime.errors import MvgptError
from tests.videos import decode_all, draw_frame, make_video

GEN = dict(max_new_tokens=6, repetition_penalty=3.0)
QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def pipeline(tiny_package):
    from mvgpt.runtime import Pipeline

    return Pipeline.load(tiny_package, threads=2)


def _frames(count: int, size=(160, 120)) -> np.ndarray:
    return np.stack([cv2.cvtColor(draw_frame(i, size), cv2.COLOR_BGR2RGB) for i in range(count)])


def _session(pipeline, **kwargs):
    from mvgpt.runtime.stream import StreamSession

    return StreamSession(pipeline, **kwargs)


def _same(live, reference, expected_indices):
    print("stream tokens", live.answer.token_ids, "pipeline tokens", reference.token_ids)
    assert list(live.answer.frame_indices) == list(expected_indices)
    assert live.answer.selected_frames == reference.selected_frames
    assert live.answer.token_ids == reference.token_ids
    assert live.answer.text == reference.text


def test_full_window_equals_pipeline_on_its_frames(pipeline):
    fps = 5
    frames = _frames(25 * fps)  # 25 s: the 16 s window holds the kept frames at 9..24 s
    with _session(pipeline, background=False) as session:
        kept = [session.push(f, i / fps) for i, f in enumerate(frames)]
        assert sum(kept) == 25  # one frame per second, on the whole seconds
        window = session.window_frames()
        assert [k.timestamp for k in window] == [float(t) for t in range(9, 25)]
        live = session.answer(QUESTION, **GEN)
    indices = [k.index for k in window]
    reference = pipeline.answer(frames[indices], QUESTION, **GEN)
    assert live.window == (9.0, 24.0)
    assert live.frame_timestamps == tuple(float(t) for t in range(9, 25))
    # the array path numbers frames 0..15; the stream numbers them in the stream
    _same(live, reference, indices)
    encoded = pipeline.encode(frames[indices])
    diff = float(np.abs(live.encoding.visual - encoded.visual).max())
    print("visual max |diff| (CLIP one frame at a time vs 16 at once):", diff)
    assert diff < 1e-4


def test_stream_equals_pipeline_on_the_file(pipeline, tmp_path):
    """A 16 s file at 10 fps: the stream keeps the frames Pipeline samples from the file."""
    path = make_video(tmp_path / "clip.mp4", seconds=16, fps=10, size=(192, 144))
    decoded = decode_all(path)
    assert len(decoded) == 160
    with _session(pipeline, background=False) as session:
        for i, frame in enumerate(decoded):
            session.push(frame, i / 10)
        live = session.answer(QUESTION, **GEN)
    reference = pipeline.answer(path, QUESTION, **GEN)
    assert reference.frame_indices == tuple(range(0, 160, 10))
    _same(live, reference, reference.frame_indices)


def test_short_stream_pads_like_pipeline(pipeline):
    frames = _frames(5 * 4)  # 5 s at 4 fps: 5 kept frames, each repeated as Pipeline repeats them
    with _session(pipeline, background=False) as session:
        for i, frame in enumerate(frames):
            session.push(frame, i / 4)
        live = session.answer(QUESTION, **GEN)
    indices = [0, 4, 8, 12, 16]
    reference = pipeline.answer(frames[indices], QUESTION, **GEN)
    expected = [indices[(i * 5) // 16] for i in range(16)]
    _same(live, reference, expected)
    assert live.window == (0.0, 4.0)


def test_background_session_answers_as_the_foreground_one(pipeline):
    fps = 4
    frames = _frames(20 * fps)
    with _session(pipeline, background=False) as session:
        for i, frame in enumerate(frames):
            session.push(frame, i / fps)
        expected = session.answer(QUESTION, **GEN)
    # pushed faster than real time: room for every kept frame (live, the oldest would go)
    with _session(pipeline, refresh_s=0.0, max_pending=64) as session:
        for i, frame in enumerate(frames):
            session.push(frame, i / fps)
        assert session.wait_idle(timeout=120)
        live = session.answer(QUESTION, **GEN)
        assert session.dropped == 0 and session.refreshes >= 1
    assert live.window == expected.window
    assert live.answer.token_ids == expected.answer.token_ids
    assert live.prefix_age_s >= 0
    assert live.prefix_seconds["prefix_prefill"] > 0


def test_window_stays_bounded_however_long_the_stream(pipeline):
    with _session(pipeline, background=False, window_s=4.0) as session:
        for i in range(120):  # 60 s at 2 fps
            session.push(np.full((8, 8, 3), i, np.uint8), i / 2)
            assert len(session.window_frames()) <= 4
        assert [k.timestamp for k in session.window_frames()] == [56.0, 57.0, 58.0, 59.0]
        assert session.kept == 60


@pytest.mark.parametrize(
    "frame, timestamp, match",
    [
        (np.zeros((8, 8), np.uint8), 0.0, "expected an \\(H, W, 3\\) RGB array"),
        (np.zeros((8, 8, 3), np.float32), 0.0, "expected uint8 pixels"),
        (np.zeros((0, 8, 3), np.uint8), 0.0, "non-empty frame"),
        (np.zeros((8, 8, 3), np.uint8), float("nan"), "expected a finite time"),
    ],
)
def test_bad_frames_are_one_clear_error(pipeline, frame, timestamp, match):
    with _session(pipeline, background=False) as session, pytest.raises(MvgptError, match=match):
        session.push(frame, timestamp)


def test_time_must_move_forward_and_frames_come_first(pipeline):
    with _session(pipeline, background=False) as session:
        with pytest.raises(MvgptError, match="push frames before asking"):
            session.answer(QUESTION)
        session.push(np.zeros((8, 8, 3), np.uint8), 1.0)
        with pytest.raises(MvgptError, match="increasing timestamps"):
            session.push(np.zeros((8, 8, 3), np.uint8), 1.0)


# ---------------------------------------------------------------------- mvgpt-run --stream


def _run(*args, timeout=300) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("mvgpt-run")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "mvgpt.runtime.cli"]
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def test_cli_streams_a_file_in_real_time(tiny_package, tmp_path):
    video = make_video(tmp_path / "live.mp4", seconds=7, fps=15)
    run = _run("--stream", video, QUESTION, "--every", 3, "--model", tiny_package, "--json",
               "--max-new-tokens", 3)  # fmt: skip
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    print([(r["stream_time_s"], r["window"], r["prefix_age_s"], r["ttft_s"]) for r in records])
    assert len(records) == 2  # at 3 s and 6 s of a 7 s stream
    for record in records:
        first, last = record["window"]
        assert 0 <= first <= last <= record["stream_time_s"]
        assert record["dropped"] == 0 and record["custom_ops"]
    assert records[1]["window"][1] > records[0]["window"][1]  # the window moved
    assert "stream ended: 105 frames" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--stream", "/nonexistent/x.mp4"], 1, "not found"),
        (["--stream", "rtsp://127.0.0.1:9/none", "--stall-timeout", "2"], 1, "stream source"),
        (["--stream", "x.mp4", QUESTION], 2, "needs --every"),
        (["--stream", "x.mp4", "--every", "0", QUESTION], 2, "expected seconds > 0"),
    ],
)
def test_cli_stream_errors_are_one_line(tiny_package, args, code, message):
    run = _run(*args, "--model", tiny_package, timeout=120)
    print(run.stderr)
    assert run.returncode == code
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    if code == 1:
        assert len(run.stderr.strip().splitlines()) == 1


def test_cli_stream_reads_questions_from_stdin(tiny_package, tmp_path):
    video = make_video(tmp_path / "live.mp4", seconds=4, fps=15)
    script = Path(sys.executable).with_name("mvgpt-run")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "mvgpt.runtime.cli"]
    run = subprocess.run(
        [*cmd, "--stream", str(video), "--model", str(tiny_package), "--max-new-tokens", "3"],
        input=f"{QUESTION}\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"Q: {QUESTION}\n")
    assert "(video 0.0-" in run.stdout and "s old)" in run.stdout
    assert "stream ended: 60 frames" in run.stderr
