"""Shared fixtures: random checkpoints in the official layout (tiny, and 0.5b real size)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
