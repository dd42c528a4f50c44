"""The runtime Pipeline against the PyTorch reference on the same random tiny checkpoint: the
same selected frames and the same generated token ids, with the SelectiveScan custom op and with
the portable video_mamba and decoder graphs.

Shared by both sides on purpose (each tested on its own in tests/unit against PIL, transformers'
processors and hand-computed sampling): video decoding, preprocessing, prompt ids and the
sampler. What this compares is every model stage: the graphs and the numpy glue against torch."""

from __future__ import annotations

import pytest

from mvgpt.runtime import Pipeline

MAX_NEW_TOKENS = 20
QUESTION = "What happens in this video?"
# (runtime options, reference overrides): the manifest's config is sampling, the runtime default
# greedy; a strong repetition penalty makes the tiny random model's greedy answer vary per token
CASES = {
    "greedy": ({}, {"do_sample": False}),
    "greedy_penalty": (
        {"repetition_penalty": 3.0},
        {"do_sample": False, "repetition_penalty": 3.0},
    ),
    "sampled": (
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7},
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7},
    ),
}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from mvgpt.models.reference_runner import ReferenceRunner

    return ReferenceRunner(*tiny_checkpoint)


@pytest.fixture(scope="module")
def portable_pipeline(tiny_package):
    mp = pytest.MonkeyPatch()
    mp.setenv("MVGPT_OPS_LIBRARY", "/nonexistent/libmvgpt_ops.so")
    try:
        return Pipeline.load(tiny_package, threads=2)
    finally:
        mp.undo()


def _compare(reference, pipeline, video, case):
    options, overrides = CASES[case]
    ref = reference.answer(video, QUESTION, max_new_tokens=MAX_NEW_TOKENS, **overrides)
    streamed: list[str] = []
    got = pipeline.answer(
        video, QUESTION, max_new_tokens=MAX_NEW_TOKENS, on_text=streamed.append, **options
    )
    print(f"{case} {video.name}: reference {ref.token_ids}")
    print(f"{case} {video.name}: runtime   {got.token_ids}")
    print(f"frames {got.frame_indices} selected {got.selected_frames}")
    assert list(got.selected_frames) == ref.selected_frames
    assert list(got.token_ids) == ref.token_ids
    assert got.text == ref.answer
    assert "".join(streamed).strip() == got.text
    return got


@pytest.mark.parametrize("case", sorted(CASES))
def test_custom_op_pipeline_matches_reference(reference, pipeline, clip_mp4, case):
    assert pipeline.package.custom_ops
    _compare(reference, pipeline, clip_mp4, case)


def test_long_portrait_video_matches_reference(reference, pipeline, long_portrait_mp4):
    got = _compare(reference, pipeline, long_portrait_mp4, "greedy_penalty")
    assert len(set(got.token_ids)) > 1  # a varied answer: the decode steps carry context


@pytest.mark.parametrize("case", ["greedy_penalty", "sampled"])
def test_portable_graph_matches_reference(reference, portable_pipeline, clip_mp4, case):
    assert not portable_pipeline.package.custom_ops
    portable = [note.split()[0] for note in portable_pipeline.notes if "portable" in note]
    assert portable == ["video_mamba", "decoder"]
    _compare(reference, portable_pipeline, clip_mp4, case)


def test_reused_encoding_gives_the_same_answers(pipeline, clip_mp4):
    """the first question about an Encoding prefills [system prompt, visual] and keeps it; the
    later ones start from that cache (and answer as a fresh run would)"""
    options = CASES["greedy_penalty"][0]
    questions = (QUESTION, "Which colours are there?")
    fresh = [pipeline.answer(clip_mp4, q, max_new_tokens=8, **options) for q in questions]
    encoding = pipeline.encode(clip_mp4)
    reused = [pipeline.answer(encoding, q, max_new_tokens=8, **options) for q in questions]
    print("reused:", [a.encoding_reused for a in reused], [a.token_ids for a in reused])
    assert [a.token_ids for a in reused] == [a.token_ids for a in fresh]
    assert not any(a.encoding_reused for a in fresh)  # a new encoding every time
    assert [a.encoding_reused for a in reused] == [False, True]
    assert all(a.seconds["clip_vision"] == 0.0 for a in reused)


def test_frames_array_input_matches_file_input(pipeline, clip_mp4):
    from mvgpt.runtime.video import read_frames

    frames, positions = read_frames(clip_mp4)
    from_file = pipeline.encode(clip_mp4)
    from_array = pipeline.encode(frames)  # 16 frames in memory: sampled as they are
    assert from_array.frame_indices == tuple(range(16))
    assert list(from_file.frame_indices) == list(positions)
    assert from_array.selected_frames == from_file.selected_frames
    assert abs(from_array.visual - from_file.visual).max() == 0.0


def test_streamed_text_handles_split_characters(pipeline):
    from mvgpt.runtime.textstream import TextStream

    text = "naïve café 日本語 ✓ done"
    ids = pipeline.tokenizer.encode(text, add_special_tokens=False).ids
    pieces: list[str] = []
    stream = TextStream(pipeline.tokenizer, pieces.append)
    for token in ids:
        stream.push(token)
    print(len(ids), pieces)
    assert len(ids) > len(pieces)  # some characters span several tokens
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) == text


def test_stream_finish_emits_a_cut_off_character(pipeline):
    from mvgpt.runtime.textstream import TextStream

    ids = pipeline.tokenizer.encode("ok 日本", add_special_tokens=False).ids
    pieces: list[str] = []
    stream = TextStream(pipeline.tokenizer, pieces.append)
    for token in ids[:-1]:  # the token limit cuts the last character in half
        stream.push(token)
    held = "".join(pieces)
    stream.finish()
    print(repr(held), pieces)
    assert "".join(pieces) == pipeline.tokenizer.decode(ids[:-1])
    assert len("".join(pieces)) > len(held)
