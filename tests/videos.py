"""Synthetic test videos: writing them with cv2.VideoWriter, tagging rotation, reading frame ids.

Every frame carries its own index as a 12-bit black/white code in a strip along its top edge, so
a test can check which source frame a decoder returned (and, on a rotated video, that the frame
came back upright: the strip is at the top only when the rotation was applied). Below the strip a
coloured disc and a square move with time.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

CODE_BITS = 12  # frame indices 0..4095
_STRIP_FRACTION = 6  # the code strip is the top 1/6 of the frame


def draw_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """One BGR uint8 frame of (width, height) `size` showing `index` in its top code strip."""
    width, height = size
    frame = np.full((height, width, 3), 40, np.uint8)
    strip = max(4, height // _STRIP_FRACTION)
    block = width // CODE_BITS
    for bit in range(CODE_BITS):
        on = (index >> (CODE_BITS - 1 - bit)) & 1
        frame[:strip, bit * block : (bit + 1) * block] = 255 if on else 0
    t = index / 10.0
    radius = max(3, min(width, height) // 8)
    cx = int((0.5 + 0.35 * np.cos(t)) * width)
    cy = int(strip + radius + (0.5 + 0.4 * np.sin(1.3 * t)) * (height - strip - 2 * radius))
    cv2.circle(frame, (cx, cy), radius, (30, 200, 240), -1)
    sx = int((index * 7) % max(1, width - radius))
    cv2.rectangle(
        frame, (sx, height - 2 * radius), (sx + radius, height - radius), (220, 60, 90), -1
    )
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """The index drawn by `draw_frame`, read back from a decoded (H, W, 3) frame (RGB or BGR)."""
    height, width = frame.shape[:2]
    strip = max(4, height // _STRIP_FRACTION)
    block = width // CODE_BITS
    gray = frame[:strip].mean(axis=2)
    index = 0
    for bit in range(CODE_BITS):
        x0, x1 = bit * block + block // 4, (bit + 1) * block - block // 4
        value = gray[strip // 4 : strip - strip // 4, x0 : max(x1, x0 + 1)].mean()
        index = (index << 1) | int(value > 128)
    return index


def make_video(
    path: str | Path,
    seconds: float = 4,
    fps: float = 10,
    size: tuple[int, int] = (320, 240),
    codec: str = "mp4v",
    num_frames: int | None = None,
) -> Path:
    """Write a synthetic video and return its path.

    `size` is (width, height); `num_frames` overrides `seconds * fps`. The container follows the
    file suffix (.mp4, .avi, .webm, .mkv). Raises RuntimeError if this OpenCV build cannot write it.
    """
    path = Path(path)
    count = int(round(seconds * fps)) if num_frames is None else num_frames
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), tuple(size))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write codec {codec!r} to {path.name}")
    try:
        for index in range(count):
            writer.write(draw_frame(index, size))
    finally:
        writer.release()
    if not path.exists() or path.stat().st_size == 0:
        raise RuntimeError(f"cv2.VideoWriter wrote nothing for codec {codec!r} to {path.name}")
    return path


def decode_all(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video file in order, as RGB uint8 (H, W, 3) arrays (cv2, no sampling)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return frames
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()


def can_write(codec: str, suffix: str, tmp_dir: str | Path) -> bool:
    """Whether this OpenCV build writes (and reads back) `codec` in a `suffix` container."""
    probe = Path(tmp_dir) / f"probe_{codec}{suffix}"
    try:
        make_video(probe, num_frames=3, fps=5, size=(96, 64), codec=codec)
    except RuntimeError:
        return False
    capture = cv2.VideoCapture(str(probe), cv2.CAP_FFMPEG)
    ok = capture.isOpened() and capture.read()[0]
    capture.release()
    probe.unlink()
    return bool(ok)


# MP4 display matrices (16.16 fixed point, last column 2.30) for clockwise rotations.
_ROTATIONS = {
    0: (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000),
    90: (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000),
    180: (-0x10000, 0, 0, 0, -0x10000, 0, 0, 0, 0x40000000),
    270: (0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000),
}


def set_mp4_rotation(path: str | Path, degrees: int) -> Path:
    """Patch the video track's tkhd display matrix of an .mp4 in place (as phones tag portrait).

    Players (and OpenCV with CAP_PROP_ORIENTATION_AUTO) then show the frames rotated clockwise
    by `degrees`. Only the first `tkhd` box is patched: enough for cv2-written single-track files.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 4:
        raise RuntimeError(f"no tkhd box in {path.name}")
    version = data[at + 4]
    # after 'tkhd': version+flags 4, times+track id+reserved+duration 20 (v0) or 32 (v1),
    # reserved 8, layer/alternate group/volume/reserved 8, then the 3x3 matrix.
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 16
    struct.pack_into(">9i", data, matrix_at, *_ROTATIONS[degrees])
    path.write_bytes(bytes(data))
    return path
