"""The built-in defaults of ``mvgpt-run``: the built-in toy model with its sample video, and a
tiny package with random weights made on first use.

The built-in model ships inside the installed package, in ``builtin/`` beside this file
(``$MVGPT_BUILTIN`` names another folder of the same layout): ``builtin/toy-shapes/`` is a package
written by mvgpt-export (a toy Mobile-VideoGPT trained on synthetic videos of coloured shapes,
``mvgpt.models.toy_builtin``), ``builtin/sample.mp4`` a held-out scene and ``builtin/sample.json``
its questions (one per kind: colour, shape, motion, count) with their answers. It needs nothing
beyond the runtime's dependencies.

The random package (``--model random-tiny``, for tests and smoke checks) lives in the cache folder
(``$MVGPT_CACHE``, else ``~/.cache/mvgpt``). It is made by running the exporter in a subprocess
(``mvgpt-export --random tiny``), so the runtime itself never imports torch; that subprocess needs
the export extra installed. A lock file keeps two first runs from exporting at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import MvgptError, PackageError
from .package import read_manifest

CACHE_ENV = "MVGPT_CACHE"
RANDOM_MODEL = "random-tiny"  # the --model name of the random package, and its cache folder
BUILTIN_ENV = "MVGPT_BUILTIN"
BUILTIN_PACKAGE = "toy-shapes"
SAMPLE_FILE = "sample.json"
DEMO_MAX_NEW_TOKENS = 8  # the toy model's answers are one or two words (toy_builtin's cap)
EXPORT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Sample:
    """The built-in sample: a video and its questions (``type``, ``question``, ``answer``)."""

    video: Path
    questions: list[dict]


def builtin_dir() -> Path:
    """``$MVGPT_BUILTIN``, else the ``builtin/`` folder of the installed runtime package."""
    return Path(os.environ.get(BUILTIN_ENV) or Path(__file__).resolve().parent / "builtin")


def _missing(what: str, path: Path) -> PackageError:
    fix = (
        "pass --model PKG with a package made by mvgpt-export"
        if what == "model"
        else "pass VIDEO QUESTION (with --model PKG) in place of --demo"
    )
    return PackageError(
        f"the built-in {what} is missing: expected {str(path)!r}, got no such file (a source "
        f"checkout before the built-in model is made?); fix: {fix}"
    )


def builtin_package() -> Path:
    """The built-in toy package folder (``builtin/toy-shapes``); a PackageError when missing."""
    package = builtin_dir() / BUILTIN_PACKAGE
    if not (package / "manifest.json").is_file():
        raise _missing("model", package / "manifest.json")
    return package


def builtin_sample() -> Sample:
    """The built-in sample video and its questions, from ``builtin/sample.json``."""
    path = builtin_dir() / SAMPLE_FILE
    if not path.is_file():
        raise _missing("sample", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        video = path.parent / data["video"]
        questions = [
            {"type": q["type"], "question": q["question"], "answer": q["answer"]}
            for q in data["questions"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PackageError(
            f"built-in sample {str(path)!r}: expected JSON with 'video' and 'questions' "
            f"(type, question, answer), got {type(e).__name__}: {e}; fix: reinstall mvgpt, or "
            "pass --model PKG with VIDEO QUESTION"
        ) from e
    if not video.is_file():
        raise _missing("sample video", video)
    return Sample(video, questions)


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
    """The cached random tiny package (``--model random-tiny``); exported on first use, and again
    after a package format change (``announce`` hears about it)."""
    folder = cache_dir()
    package = folder / RANDOM_MODEL
    if _is_current(package):
        return package
    with _locked(folder / f".{RANDOM_MODEL}.lock"):
        if _is_current(package):  # another process made it meanwhile
            return package
        announce(
            f"making the random package in {package} (first use, or a new package format; about "
            "a minute): a tiny model with RANDOM weights"
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
                f"making the random package: expected mvgpt-export to finish, got {e}; fix: "
                "pass --model PKG with a package made by mvgpt-export"
            ) from e
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "no message"
            raise PackageError(
                f"making the random package: expected mvgpt-export to succeed, got exit "
                f"{done.returncode} ({last}); fix: install the export extra "
                "(pip install 'mvgpt[export]'), or pass --model PKG"
            )
    return package
