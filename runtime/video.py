"""Video decoding and frame sampling: a file path -> `num_frames` RGB uint8 frames.

Sampling follows the reference exactly (facts §1.2: 1 fps, then linspace down to 16; a short clip
is spread evenly). Decoding uses OpenCV's FFmpeg backend and differs from the reference's decord
in two deliberate ways:

- Rotation metadata is honoured (CAP_PROP_ORIENTATION_AUTO): a phone's portrait video comes out
  upright, as every player shows it. decord ignores the tag and would hand the model sideways
  frames.
- A video with fewer decodable frames than `num_frames` (down to a single frame, i.e. a still
  image) is accepted: all its frames are used, each repeated in time order until there are
  `num_frames` (`pad_positions`). The reference would feed zero-padded frames (or crash on one
  frame); the model needs 16 frames for its two 8-frame chunks, and a user expects a short clip
  to work.

Only the sampled frames are converted to RGB. Short gaps are skipped with grab() (decode without
colour conversion); gaps of `seek_min_gap` frames or more are skipped by seeking, much faster on
long clips and giving the same frames on mp4v, MJPG, XVID, VP8 and VP9 files. A frame count that
the container overstates (truncated or damaged files) is detected when the stream ends early: the
real frames are then counted and the positions re-sampled from that count.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np

from .errors import MvgptError, VideoError

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # used when the container reports no usable frame rate (0, negative, NaN)
SEEK_MIN_GAP = 64  # skip at least this many frames by seeking instead of grabbing


def sample_positions(
    num_decoded: int, fps: float, num_frames: int = 16, target_fps: float = 1.0
) -> list[int]:
    """Frame indices the reference model samples from a video of `num_decoded` frames.

    Sample at `target_fps` (stride round(fps / target_fps)); more than `num_frames` positions are
    thinned with an int-truncated linspace, fewer are replaced by `num_frames` positions spread
    with stride (num_decoded - 1) // (num_frames - 1). A video shorter than `num_frames` frames
    gives all its frames. `fps` that is not a positive number falls back to DEFAULT_FPS.
    """
    if num_decoded < 1:
        raise VideoError(
            f"cannot sample frames: expected a video with at least 1 frame, got {num_decoded}; "
            "fix: use a video that has decodable frames"
        )
    if num_frames < 1 or not (target_fps > 0 and math.isfinite(target_fps)):
        raise MvgptError(
            "frame sampling: expected num_frames >= 1 and a positive target_fps, got "
            f"num_frames={num_frames}, target_fps={target_fps}; fix: pass valid sampling values"
        )
    if not (math.isfinite(fps) and fps > 0):
        fps = DEFAULT_FPS
    stride = max(1, int(round(fps / target_fps)))
    all_pos = list(range(0, num_decoded, stride))
    if len(all_pos) > num_frames:
        picks = np.linspace(0, len(all_pos) - 1, num_frames, dtype=int)
        return [all_pos[i] for i in picks]
    if len(all_pos) == num_frames:
        return all_pos
    wanted = min(num_frames, num_decoded)  # the reference lowers its minimum for short videos
    if wanted == 1:
        return [0]
    stride = max(1, (num_decoded - 1) // (wanted - 1))
    return list(range(0, stride * (wanted - 1) + 1, stride))


def pad_positions(positions: list[int], num_frames: int) -> list[int]:
    """Repeat `positions` in time order until there are `num_frames` (each about equally often)."""
    count = len(positions)
    if count == 0 or count >= num_frames:
        return list(positions)
    return [positions[(i * count) // num_frames] for i in range(num_frames)]


def read_frames(
    path: str | Path, num_frames: int = 16, seek_min_gap: int | None = SEEK_MIN_GAP
) -> tuple[np.ndarray, list[int]]:
    """Decode the sampled frames of a video file.

    Returns (frames, positions): frames (num_frames, H, W, 3) uint8 RGB, upright; positions the
    source frame index of each (repeated for videos shorter than `num_frames`, see the module
    docstring). `seek_min_gap=None` never seeks. Raises VideoError with a one-line reason.
    """
    path = check_file(path)
    capture = _open(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        count = int(reported) if math.isfinite(reported) and reported > 0 else 0
        if count == 0:
            capture.release()
            count = _count_frames(path)
            capture = _open(path)
        positions = sample_positions(count, fps, num_frames)
        frames = _decode(capture, positions, seek_min_gap)
    finally:
        capture.release()
    if frames is None:  # the stream ended early (overstated length) or a seek missed
        real = _count_frames(path)
        log.warning(
            "%s: decoding again frame by frame (container: %d frames, decodable: %d)",
            path.name,
            count,
            real,
        )
        positions = sample_positions(real, fps, num_frames)
        capture = _open(path)
        try:
            frames = _decode(capture, positions, seek_min_gap=None)
        finally:
            capture.release()
        if frames is None:
            raise VideoError(
                f"cannot decode {path.name}: expected frames 0..{real - 1} to decode twice the "
                "same way, got a shorter second pass; fix: re-encode the video (e.g. to H.264 mp4)"
            )
    positions = pad_positions(positions, num_frames)
    return _to_rgb_stack(path, [frames[p] for p in positions]), positions


def check_file(path: str | Path) -> Path:
    """Fail fast on a path that cannot be a video: missing, a folder or empty."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoError(
            f"video not found: expected an existing file, got {str(path)!r}; fix: check the path"
        )
    if path.is_dir():
        raise VideoError(
            f"video path is a folder: expected a video file, got the folder {str(path)!r}; "
            "fix: name a file inside it"
        )
    if path.stat().st_size == 0:
        raise VideoError(
            f"video file is empty: expected a video, got 0 bytes in {str(path)!r}; "
            "fix: re-copy or re-record the file"
        )
    return path


def _open(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise VideoError(
            f"cannot open {str(path)!r}: expected a video file OpenCV/FFmpeg can read, got an "
            "unreadable, truncated or non-video file; fix: check the file plays, or re-encode it"
        )
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return capture


def _count_frames(path: Path) -> int:
    """Frames the stream really holds (a full grab() pass: decodes, converts nothing)."""
    capture = _open(path)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise VideoError(
            f"no decodable frames in {str(path)!r}: expected at least 1 video frame, got 0; "
            "fix: check the file has a video stream, or re-encode it"
        )
    return count


def _decode(
    capture: cv2.VideoCapture, positions: list[int], seek_min_gap: int | None
) -> dict[int, np.ndarray] | None:
    """BGR frames at the unique `positions`, or None if the stream ends early or a seek misses."""
    frames: dict[int, np.ndarray] = {}
    current = 0  # index of the frame the next grab() returns
    for target in sorted(set(positions)):
        gap = target - current
        if seek_min_gap is not None and gap >= seek_min_gap:
            capture.set(cv2.CAP_PROP_POS_FRAMES, target)
            if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) != target:
                return None  # the caller falls back to a sequential pass
            current = target
        while current < target:
            if not capture.grab():
                return None
            current += 1
        if not capture.grab():
            return None
        ok, frame = capture.retrieve()
        if not ok or frame is None:
            return None
        frames[target] = frame
        current += 1
    return frames


def _to_rgb_stack(path: Path, frames: list[np.ndarray]) -> np.ndarray:
    shape = frames[0].shape
    if any(frame.shape != shape for frame in frames) or len(shape) != 3 or shape[2] != 3:
        got = sorted({frame.shape for frame in frames})
        raise VideoError(
            f"inconsistent frames in {str(path)!r}: expected one (H, W, 3) size for all frames, "
            f"got {got}; fix: re-encode the video at a fixed resolution"
        )
    out = np.empty((len(frames), *shape), np.uint8)
    for i, frame in enumerate(frames):
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out[i])
    return out
