"""The built-in defaults of ``mvgpt-run``: a tiny package with random weights, made on first use,
and a synthetic demo video.

Both live in the cache folder (``$MVGPT_CACHE``, else ``~/.cache/mvgpt``). The package is made by
running the exporter in a subprocess (``mvgpt-export --random tiny``), so the runtime itself never
imports torch; that subprocess needs the export extra installed. A lock file keeps two first runs
from exporting at the same time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from .errors import MvgptError, PackageError
from .package import read_manifest

CACHE_ENV = "MVGPT_CACHE"
DEFAULT_PACKAGE = "default-tiny"
DEMO_VIDEO = "demo-shapes.mp4"
DEMO_MAX_NEW_TOKENS = 48
DEMO_QUESTION = "What is moving in this video, and in which direction?"
EXPORT_TIMEOUT_S = 1800


def cache_dir() -> Path:
    """``$MVGPT_CACHE`` or ``~/.cache/mvgpt`` (created)."""
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mvgpt").expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MvgptError(
            f"cache folder {str(folder)!r}: expected a writable folder, got {e.strerror}; fix: "
            f"set {CACHE_ENV} to a writable folder"
        ) from e
    return folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: go ahead unlocked
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(package: Path) -> bool:
    """A default package whose manifest this mvgpt reads (an older format is re-made)."""
    try:
        read_manifest(package)
    except PackageError:
        return False
    return True


def default_package(announce: Callable[[str], None]) -> Path:
    """The cached random tiny package; exported on first use, and again after a package format
    change (``announce`` hears about it)."""
    folder = cache_dir()
    package = folder / DEFAULT_PACKAGE
    if _is_current(package):
        return package
    with _locked(folder / f".{DEFAULT_PACKAGE}.lock"):
        if _is_current(package):  # another process made it meanwhile
            return package
        announce(
            f"making the built-in default package in {package} (first run, or a new package "
            "format; about a minute): a tiny model with RANDOM weights"
        )
        command = [sys.executable, "-m", "mvgpt.exporter.cli", "--random", "tiny"]
        try:
            done = subprocess.run(
                [*command, "--out", str(package)],
                capture_output=True,
                text=True,
                timeout=EXPORT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PackageError(
                f"making the default package: expected mvgpt-export to finish, got {e}; fix: "
                "pass --model PKG with a package made by mvgpt-export"
            ) from e
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "no message"
            raise PackageError(
                f"making the default package: expected mvgpt-export to succeed, got exit "
                f"{done.returncode} ({last}); fix: install the export extra "
                "(pip install 'mvgpt[export]'), or pass --model PKG"
            )
    return package


def _demo_frame(index: int, width: int, height: int) -> np.ndarray:
    """A dark frame with a disc circling and a square sliding left to right (BGR)."""
    frame = np.full((height, width, 3), (60, 40, 30), np.uint8)
    t = index / 10.0
    cx = int(width * (0.5 + 0.3 * np.cos(t)))
    cy = int(height * (0.5 + 0.3 * np.sin(t)))
    cv2.circle(frame, (cx, cy), height // 8, (40, 200, 250), -1)
    side = height // 6
    x = int((width - side) * (index % 60) / 59)
    cv2.rectangle(frame, (x, height - 2 * side), (x + side, height - side), (220, 80, 60), -1)
    return frame


def demo_video(seconds: int = 6, fps: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """The demo clip in the cache folder, written with cv2 on first use."""
    folder = cache_dir()
    path = folder / DEMO_VIDEO
    if path.is_file() and path.stat().st_size > 0:
        return path
    handle, tmp = tempfile.mkstemp(suffix=".mp4", dir=folder, prefix=".demo-")
    os.close(handle)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
    try:
        if not writer.isOpened():
            raise MvgptError(
                f"demo video: expected OpenCV to write mp4v to {folder}, got a writer that "
                "cannot open; fix: pass your own video instead of --demo"
            )
        for index in range(seconds * fps):
            writer.write(_demo_frame(index, *size))
        writer.release()
    except BaseException:
        writer.release()
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
