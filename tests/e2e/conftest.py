"""Session fixtures of the end-to-end tests: one tiny package exported from the session's tiny
random checkpoint (shared with the unit tests through the session's base temp folder), a loaded
Pipeline, and generated videos."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.videos import make_video


@pytest.fixture(scope="session")
def pipeline(tiny_package):
    from mvgpt.runtime import Pipeline

    return Pipeline.load(tiny_package, threads=2)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def clip_mp4(video_dir) -> Path:
    """4 s at 10 fps, 320x240: fewer than 16 one-second positions, so they are spread."""
    return make_video(video_dir / "clip.mp4", seconds=4, fps=10)


@pytest.fixture(scope="session")
def long_portrait_mp4(video_dir) -> Path:
    """20 s at 8 fps, 180x320 portrait: 20 one-second positions thinned to 16."""
    return make_video(video_dir / "long_portrait.mp4", seconds=20, fps=8, size=(180, 320))
