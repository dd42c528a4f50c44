"""Shared fixtures: random checkpoints in the official layout (tiny, and 0.5b real size)."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _import_the_kernels_distribution() -> None:
    """The tests run with the repository's root on sys.path, where its kernels/ folder (installed
    as mvgpt.kernels) would pass for the top-level package ``kernels``: Hugging Face's
    distribution of that name, which transformers 5.25+ requires and imports whenever it is
    installed, would then be this folder (``cannot import name 'CUDAProperties' from
    'kernels'``). Import the installed one first, the root left out of the search."""
    try:
        metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        return
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != ROOT]
    try:
        importlib.import_module("kernels")
    except Exception:  # a broken install: transformers will say so itself
        pass
    finally:
        sys.path[:] = saved


_import_the_kernels_distribution()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(checkpoint_dir, clip_dir) of a tiny random checkpoint."""
    from mvgpt.models.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def checkpoint_05b(tmp_path_factory):
    """(checkpoint_dir, clip_dir) of a random checkpoint with the real 0.5B shapes (~1.3 GB)."""
    from mvgpt.models.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("real"), "0.5b", seed=0)


@pytest.fixture(scope="session")
def tiny_package(tiny_checkpoint, tmp_path_factory) -> Path:
    """One fp32 package exported from the tiny checkpoint, shared by every test of the session
    (``$MVGPT_TEST_TINY_PACKAGE``: one a parent test process exported)."""
    import os

    if os.environ.get("MVGPT_TEST_TINY_PACKAGE"):
        return Path(os.environ["MVGPT_TEST_TINY_PACKAGE"])
    from mvgpt.exporter.package import export_package

    out = tmp_path_factory.mktemp("tiny_package") / "pkg"
    export_package(*tiny_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def tiny_quantized_package(tiny_checkpoint, tmp_path_factory):
    """``make(precision)``: the tiny checkpoint exported at that precision, once per session."""
    from mvgpt.exporter.package import export_package

    made: dict[str, Path] = {}

    def make(precision: str) -> Path:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"tiny_{precision}") / "pkg"
            export_package(*tiny_checkpoint, out, precision=precision)
            made[precision] = out
        return made[precision]

    return make
