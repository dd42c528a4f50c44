"""``mvgpt-run`` in a subprocess on generated videos: answers, --json fields, several questions
on one encoding, the bad-input battery (exit 1, exactly one stderr line, no traceback) and valid
odd inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.videos import can_write, make_video

STAGES = ("decode_video", "clip_vision", "frame_scorer", "video_mamba", "projectors")
FIELDS = {
    "question", "answer", "token_ids", "frame_indices", "selected_frames", "seconds", "ttft_s",
    "decode_tokens_per_s", "peak_rss_mb", "encoding_reused",
}  # fmt: skip


def _command() -> list[str]:
    script = Path(sys.executable).with_name("mvgpt-run")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mvgpt.runtime.cli"]


def run_cli(*args, cache: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["MVGPT_CACHE"] = str(cache)
    return subprocess.run(
        [*_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_answer_streams_to_stdout(tiny_package, clip_mp4):
    plain = run_cli(clip_mp4, "What happens?", "--model", tiny_package, "--max-new-tokens", 6,
                    "--repetition-penalty", 3)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "Traceback" not in plain.stderr
    assert "RANDOM" in plain.stderr  # the package's random weights are announced
    as_json = run_cli(clip_mp4, "What happens?", "--model", tiny_package, "--max-new-tokens", 6,
                      "--repetition-penalty", 3, "--json")  # fmt: skip
    (record,) = _json_lines(as_json.stdout)
    assert record["answer"]
    assert plain.stdout == record["answer"] + "\n"  # the streamed text is the answer


def test_json_fields(tiny_package, clip_mp4):
    done = run_cli(clip_mp4, "What happens?", "--model", tiny_package, "--max-new-tokens", 5,
                   "--json", "--threads", 1)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = _json_lines(done.stdout)
    print(record)
    assert set(record) >= FIELDS
    assert record["frame_indices"] == list(range(0, 31, 2))  # 40 frames: stride 39 // 15 = 2
    selected = record["selected_frames"]
    assert len(selected) == 8 and selected == sorted(selected)
    assert all(0 <= s < 8 for s in selected[:4]) and all(8 <= s < 16 for s in selected[4:])
    assert 1 <= len(record["token_ids"]) <= 5
    assert set(STAGES) | {"prefill", "decode"} <= set(record["seconds"])
    assert all(record["seconds"][s] > 0 for s in STAGES)
    assert record["ttft_s"] >= record["seconds"]["prefill"] > 0
    assert record["peak_rss_mb"] > 0
    assert record["encoding_reused"] is False


def test_two_questions_reuse_the_encoding(tiny_package, clip_mp4):
    done = run_cli(clip_mp4, "What happens?", "--question", "Which colours?", "--model",
                   tiny_package, "--max-new-tokens", 4, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = _json_lines(done.stdout)
    assert [first["question"], second["question"]] == ["What happens?", "Which colours?"]
    assert first["encoding_reused"] is False and second["encoding_reused"] is True
    assert first["seconds"]["clip_vision"] > 0 and second["seconds"]["clip_vision"] == 0
    assert first["frame_indices"] == second["frame_indices"]
    assert first["selected_frames"] == second["selected_frames"]
    plain = run_cli(clip_mp4, "What happens?", "-q", "Which colours?", "--model", tiny_package,
                    "--max-new-tokens", 4)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == "Q: What happens?" and lines[2] == "Q: Which colours?"
    assert lines[1] == "A: " + first["answer"] and lines[3] == "A: " + second["answer"]


def _mismatched_package(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for item in source.iterdir():
        if item.name != "manifest.json":
            (dest / item.name).symlink_to(item)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["stages"]["clip_vision"]["inputs"][0]["name"] = "pixels"
    manifest["stages"]["frame_scorer"]["outputs"][0]["shape"].append(1)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _bad_inputs(tmp: Path, package: Path, good: Path) -> dict[str, list]:
    (tmp / "folder").mkdir()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    data = good.read_bytes()
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp / "not_a_package").mkdir()
    bad_package = _mismatched_package(package, tmp / "mismatched")
    m = ["--model", package]
    return {
        "missing file": [tmp / "missing.mp4", "q", *m],
        "folder": [tmp / "folder", "q", *m],
        "zero-byte file": [tmp / "empty.mp4", "q", *m],
        "text renamed .mp4": [tmp / "text.mp4", "q", *m],
        "truncated mp4": [tmp / "truncated.mp4", "q", *m],
        "empty question": [good, "", *m],
        "blank question": [good, "   ", *m],
        "empty second question": [good, "q", "--question", "", *m],
        "missing --model folder": [good, "q", "--model", tmp / "nope"],
        "--model not a package": [good, "q", "--model", tmp / "not_a_package"],
        "--model is a file": [good, "q", "--model", good],
        "graph does not match manifest": [good, "q", "--model", bad_package],
        "negative temperature": [good, "q", *m, "--temperature", -1],
        "zero max-new-tokens": [good, "q", *m, "--max-new-tokens", 0],
        "top-p above 1": [good, "q", *m, "--top-p", 2],
        "provider not installed": [good, "q", *m, "--provider", "tensorrt"],
    }


def test_bad_inputs_fail_with_one_line(tiny_package, clip_mp4, tmp_path):
    failures = []
    for name, args in _bad_inputs(tmp_path, tiny_package, clip_mp4).items():
        done = run_cli(*args)
        lines = done.stderr.splitlines()
        print(f"{name}: rc={done.returncode} {lines}")
        ok = done.returncode == 1 and len(lines) == 1 and lines[0].startswith("mvgpt-run: error:")
        if not ok or "Traceback" in done.stderr or done.stdout:
            failures.append((name, done.returncode, done.stderr, done.stdout))
    assert not failures


def test_mismatch_error_lists_every_problem(tiny_package, clip_mp4, tmp_path):
    bad = _mismatched_package(tiny_package, tmp_path / "mismatched")
    done = run_cli(clip_mp4, "q", "--model", bad)
    assert done.returncode == 1
    assert "'pixels'" in done.stderr and "'pixel_values'" in done.stderr
    assert "frame_scorer output 'frame_scores'" in done.stderr and "rank" in done.stderr


def test_debug_shows_the_traceback(tiny_package, tmp_path):
    done = run_cli(tmp_path / "missing.mp4", "q", "--model", tiny_package, "--debug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "VideoError" in done.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["video-only"], ["--threads", "0", "v.mp4", "q"], ["--provider", "tpu", "v.mp4", "q"]],
)
def test_usage_errors_exit_2(args):
    done = run_cli(*args)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr


def _odd_videos(folder: Path) -> dict[str, Path]:
    videos = {
        "portrait": make_video(folder / "portrait.mp4", seconds=3, fps=10, size=(144, 256)),
        "2-second clip": make_video(folder / "short.mp4", seconds=2, fps=12),
        "1-frame video": make_video(folder / "one.mp4", num_frames=1),
        "spaces and non-ASCII": make_video(folder / "my vidéo ü 日本.mp4", seconds=3, fps=8),
    }
    if can_write("MJPG", ".avi", folder):
        videos[".avi"] = make_video(folder / "clip.avi", seconds=3, fps=10, codec="MJPG")
    return videos


def test_valid_odd_inputs(tiny_package, tmp_path):
    videos = _odd_videos(tmp_path)
    assert ".avi" in videos  # this OpenCV build writes MJPG .avi
    for name, video in videos.items():
        done = run_cli(video, "What is this?", "--model", tiny_package, "--max-new-tokens", 2,
                       "--json")  # fmt: skip
        assert done.returncode == 0, (name, done.stderr)
        (record,) = _json_lines(done.stdout)
        print(name, record["frame_indices"], record["selected_frames"])
        assert len(record["frame_indices"]) == 16 and len(record["selected_frames"]) == 8
        if name == "1-frame video":  # the one frame, repeated (video.py's behaviour)
            assert record["frame_indices"] == [0] * 16


def test_interactive_reads_questions_until_eof(tiny_package, clip_mp4):
    done = subprocess.run(
        [*_command(), str(clip_mp4), "--interactive", "--model", str(tiny_package),
         "--max-new-tokens", "2", "--json"],
        input="first question\n\nsecond question\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["question"] for r in _json_lines(done.stdout)] == [
        "first question",
        "second question",
    ]


def test_random_tiny_is_made_once_on_first_use(tmp_path, clip_mp4):
    """--model random-tiny: the random package, exported into the cache folder on first use."""
    cache = tmp_path / "cache"
    args = (clip_mp4, "What happens?", "--model", "random-tiny", "--max-new-tokens", 3)
    done = run_cli(*args, cache=cache, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "making the random package" in done.stderr and "RANDOM" in done.stderr
    assert (cache / "random-tiny" / "manifest.json").is_file()
    again = run_cli(*args, "--json", cache=cache)
    assert again.returncode == 0, again.stderr
    assert "making the random package" not in again.stderr  # made once
    assert "RANDOM" in again.stderr
    assert _json_lines(again.stdout)[0]["answer"] == done.stdout.strip()
    shutil.rmtree(cache)
