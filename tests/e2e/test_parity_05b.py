"""End-to-end parity at the real 0.5B shapes: the same random checkpoint through the PyTorch
reference and through the exported package + numpy runtime gives the same greedy tokens and the
same selected frames (decoding, preprocessing, prompt and sampler are shared code, tested in
tests/unit). Slow (a real-size export, ~5-8 minutes on 2 cores): deselect with -m "not slow"."""

from __future__ import annotations

import pytest

from tests.videos import make_video

pytestmark = pytest.mark.slow

QUESTION = "What is moving in this video, and in which direction?"
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def package_05b(checkpoint_05b, tmp_path_factory):
    from mvgpt.exporter.package import export_package

    out = tmp_path_factory.mktemp("pkg05b") / "pkg"
    checks = export_package(*checkpoint_05b, out)
    for c in checks:
        print(f"{c.file:<28} max|diff| {c.max_abs_diff:.3e} rel {c.max_rel_diff:.2e}")
    return out


def test_real_size_runtime_matches_reference(checkpoint_05b, package_05b, tmp_path):
    from mvgpt.models.reference_runner import ReferenceRunner
    from mvgpt.runtime import Pipeline

    video = make_video(tmp_path / "clip.mp4", seconds=20, fps=8, size=(320, 240))
    reference = ReferenceRunner(*checkpoint_05b)
    ref = reference.answer(video, QUESTION, max_new_tokens=MAX_NEW_TOKENS)
    del reference
    got = Pipeline.load(package_05b, threads=2).answer(
        video, QUESTION, max_new_tokens=MAX_NEW_TOKENS
    )
    print("reference:", ref.token_ids, ref.selected_frames, ref.seconds)
    print("runtime:  ", got.token_ids, got.selected_frames, got.seconds)
    assert list(got.selected_frames) == ref.selected_frames
    assert len(ref.token_ids) > 0
    assert list(got.token_ids) == ref.token_ids
