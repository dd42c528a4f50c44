"""Frame scorer: column-sum identity, a numpy reference, a hub frame that must win, selection
order and offsets, and a legacy ONNX export run in onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from mvgpt.models.frame_scorer import FrameScorer, frame_scores, select_frames
from mvgpt.runtime.manifest import OPSET

T, P, D = 8, 196, 64


def _features(num_chunks: int = 2, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(num_chunks, T * P, D, generator=g)


def _numpy_scores(features: np.ndarray, frames_per_chunk: int) -> np.ndarray:
    """The official formulation in float64: A @ one_hot(frame of token), summed over queries."""
    out = []
    for x in features.astype(np.float64):
        n, d = x.shape
        logits = x @ x.T / np.sqrt(d)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        one_hot = np.zeros((n, frames_per_chunk))
        one_hot[np.arange(n), np.arange(n) // (n // frames_per_chunk)] = 1.0
        out.append((a @ one_hot).sum(0))
    return np.stack(out)


def test_scores_sum_to_number_of_tokens():
    scores = frame_scores(_features(scale=0.3), T)
    sums = scores.sum(-1)
    diff = (sums - T * P).abs().max().item()
    print(f"chunk score sums vs N={T * P}: max diff {diff:.3e}")
    assert scores.shape == (2, T) and scores.dtype == torch.float32
    assert diff < 1e-2


def test_matches_numpy_reference():
    feats = _features(scale=0.3)
    got = frame_scores(feats, T).numpy()
    expected = _numpy_scores(feats.numpy(), T)
    diff = np.abs(got - expected).max()
    print(f"frame scores vs numpy float64: max diff {diff:.3e}")
    assert diff < 1e-3
    assert got.std() > 1e-2  # the case is not degenerate: frames score differently


def test_hub_frame_wins_and_order_is_kept():
    """A frame whose 196 tokens repeat one vector aligned with every other token draws the most
    attention, so it is selected in its chunk; selections stay in time order."""
    g = torch.Generator().manual_seed(3)
    e = torch.zeros(D)
    e[0] = 1.0
    feats = torch.randn(2, T * P, D, generator=g) * 0.5 + 2.0 * e  # every token leans along e
    hubs = (5, 2)  # chunk 0 -> frame 5, chunk 1 -> frame 2 (global 10)
    for c, t in enumerate(hubs):
        feats[c, t * P : (t + 1) * P] = 6.0 * e  # one vector, repeated over the whole frame
    scores = frame_scores(feats, T)
    chosen = select_frames(scores, 4)
    print(
        f"hub scores {[round(scores[c, t].item(), 1) for c, t in enumerate(hubs)]}, "
        f"chunk maxima {scores.max(-1).values.tolist()}, chosen {chosen.tolist()}"
    )
    assert scores.argmax(-1).tolist() == list(hubs)
    assert 5 in chosen[:4].tolist() and 8 + 2 in chosen[4:].tolist()
    assert chosen[:4].tolist() == sorted(chosen[:4].tolist())
    assert chosen[4:].tolist() == sorted(chosen[4:].tolist())


def test_select_frames_top_k_sorted_with_chunk_offsets():
    scores = torch.tensor(
        [[0.1, 5.0, 3.0, 0.2, 4.0, 0.0, 1.0, 2.0], [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0]]
    )
    chosen = select_frames(scores, 4)
    assert chosen.dtype == torch.int64
    assert chosen.tolist() == [1, 2, 4, 7, 8, 10, 12, 14]


@pytest.mark.filterwarnings("ignore")
def test_exports_with_legacy_onnx_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = FrameScorer(T).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_features(scale=0.3),),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["features"],
            output_names=["scores"],
            dynamic_axes={"features": {0: "num_chunks"}, "scores": {0: "num_chunks"}},
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for num_chunks in (2, 3):
        feats = _features(num_chunks, seed=num_chunks, scale=0.3)
        got = sess.run(None, {"features": feats.numpy()})[0]
        expected = frame_scores(feats, T).numpy()
        diff = np.abs(got - expected).max()
        print(f"frame scorer ONNX ({num_chunks} chunks) vs torch: max diff {diff:.3e}")
        assert got.shape == (num_chunks, T)
        assert diff < 1e-3
