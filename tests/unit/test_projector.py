"""ETP projectors: shapes, state-dict keys and parameter counts, the pooling matrix, the
4-frames-read-as-14x14 quirk of the video projector, and legacy ONNX export in onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvgpt.models.projector import (
    ETProjector,
    ImageProjector,
    VideoProjector,
    adaptive_pool_matrix,
    pool_and_regroup,
)
from mvgpt.runtime.manifest import OPSET

KEYS = [
    "mlp.mlp.0.weight",
    "mlp.mlp.0.bias",
    "mlp.mlp.2.weight",
    "mlp.mlp.2.bias",
    "peg.peg.0.weight",
    "peg.peg.0.bias",
]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_etp(proj: ETProjector, x: torch.Tensor) -> torch.Tensor:
    """The official formulation, with nn.AdaptiveAvgPool2d."""
    x = proj.mlp.mlp(x)
    b, n, h = x.shape
    side = int(n**0.5)
    x = x.view(b, side, side, h).permute(0, 3, 1, 2)
    x = F.adaptive_avg_pool2d(x, proj.grid)
    x = proj.peg.peg(x) + x
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(("in_size", "out_size"), [(14, 12), (14, 7), (14, 14), (5, 3), (7, 4)])
def test_pool_matrix_equals_adaptive_avg_pool2d(in_size, out_size):
    x = _randn(2, 5, in_size, in_size)
    expected = F.adaptive_avg_pool2d(x, out_size).flatten(2)  # (2, 5, out*out)
    got = torch.matmul(x.flatten(2), adaptive_pool_matrix(in_size, out_size).T)
    diff = (got - expected).abs().max().item()
    print(f"pool matrix {in_size}->{out_size}: max diff {diff:.3e}")
    assert diff < 1e-6


def test_keys_and_parameter_counts_for_h896():
    video, image = VideoProjector(576, 896), ImageProjector(768, 896)
    assert list(video.state_dict()) == KEYS and list(image.state_dict()) == KEYS
    assert video.state_dict()["peg.peg.0.weight"].shape == (896, 1, 3, 3)
    assert sum(p.numel() for p in video.parameters()) == 1_329_664
    assert sum(p.numel() for p in image.parameters()) == 1_501_696
    assert sum(p.numel() for p in VideoProjector(576, 1536).parameters()) == 3_262_464
    assert sum(p.numel() for p in ImageProjector(768, 1536).parameters()) == 3_557_376


def test_shapes_and_match_with_official_formulation():
    torch.manual_seed(0)
    video, image = VideoProjector(576, 64).eval(), ImageProjector(768, 64).eval()
    feats_v, feats_i = _randn(8, 196, 576), _randn(16, 196, 768, seed=1)
    with torch.no_grad():
        out_v, out_i = video(feats_v), image(feats_i)
        ref_v = _reference_etp(video, pool_and_regroup(feats_v, 2))
        ref_i = _reference_etp(image, feats_i)
    assert out_v.shape == (2, 49, 64) and out_i.shape == (16, 144, 64)
    dv, di = (out_v - ref_v).abs().max().item(), (out_i - ref_i).abs().max().item()
    print(f"video ETP vs official form {dv:.3e}; image ETP vs official form {di:.3e}")
    assert dv < 1e-5 and di < 1e-5


def test_video_grid_one_is_the_mean_of_each_chunk():
    # the toy model's video_grid 1: frames still pooled to 7x7 and regrouped, then one token per
    # chunk: the MLP's outputs averaged over the chunk's 4 frames x 49 tokens
    torch.manual_seed(0)
    proj = VideoProjector(24, 16, grid=1).eval()
    feats = _randn(8, 49, 24)  # 32 px patches: 7x7 per frame already
    with torch.no_grad():
        out = proj(feats)
        mean = proj.mlp(feats).reshape(2, 4 * 49, 16).mean(1)
        conv = proj.peg.peg[0]
        expected = mean * (1 + conv.weight[:, 0, 1, 1]) + conv.bias  # 3x3 conv on 1x1: centre tap
    diff = (out[:, 0] - expected).abs().max().item()
    print(f"video_grid 1 vs chunk means: max diff {diff:.3e}")
    assert out.shape == (2, 1, 16) and diff < 1e-5


def test_pool_and_regroup_layout():
    feats = _randn(8, 196, 5)
    out = pool_and_regroup(feats, num_chunks=2)
    assert out.shape == (2, 196, 5)
    # chunk 1, frame slot 2 = selected frame 6; pooled token (row 3, col 4) = 2x2 mean
    expected = feats[6].view(14, 14, 5)[6:8, 8:10].mean((0, 1))
    diff = (out[1, 2 * 49 + 3 * 7 + 4] - expected).abs().max().item()
    print(f"regroup layout: max diff {diff:.3e}")
    assert diff < 1e-6


def test_video_tokens_mix_adjacent_frames():
    """Chunk grid rows 0..3.5 hold frame 0, rows 3.5..7 frame 1: output token (row 1, col 4) pools
    grid rows 2-3, cols 8-9, i.e. frame 0's row 2 and frame 1's first row. With the PEG conv zeroed
    (no spatial mixing besides pooling), that token must depend on both frames."""
    torch.manual_seed(0)
    proj = VideoProjector(576, 32).eval()
    with torch.no_grad():
        proj.peg.peg[0].weight.zero_()
        proj.peg.peg[0].bias.zero_()
    feats = _randn(8, 196, 576)
    token = 1 * 7 + 4

    def changed(frame: int) -> torch.Tensor:
        f2 = feats.clone()
        f2[frame] += _randn(196, 576, seed=10 + frame)
        with torch.no_grad():
            return (proj(f2) - proj(feats)).abs().amax(-1)[0]  # (49,) chunk 0

    d0, d1, d2 = changed(0), changed(1), changed(2)
    print(
        f"token {token}: change from frame 0 {d0[token]:.3e}, from frame 1 {d1[token]:.3e}; "
        f"frame 0 reaches tokens {d0.nonzero().flatten().tolist()}"
    )
    assert d0[token] > 1e-3 and d1[token] > 1e-3  # one token, two frames
    assert d2[token] == 0.0
    # a per-frame reading (7x7 tokens per frame, as the paper's figure suggests) would confine
    # frame 0 to 49 tokens of its own; here frame 0 reaches exactly grid rows 0..1 (tokens 0..13)
    assert d0.nonzero().flatten().tolist() == list(range(14))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["video", "image"])
def test_exports_with_legacy_onnx_and_matches_onnxruntime(kind):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    if kind == "video":
        model, x = VideoProjector(576, 896).eval(), _randn(8, 196, 576)
        dynamic = {}
    else:
        model, x = ImageProjector(768, 896).eval(), _randn(4, 196, 768)
        dynamic = {"features": {0: "num_frames"}, "embeds": {0: "num_frames"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["features"],
            output_names=["embeds"],
            dynamic_axes=dynamic,
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    inputs = [x] if kind == "video" else [x, _randn(16, 196, 768, seed=2)]
    for inp in inputs:
        got = sess.run(None, {"features": inp.numpy()})[0]
        with torch.no_grad():
            expected = model(inp).numpy()
        diff = np.abs(got - expected).max()
        print(f"{kind} projector ONNX {tuple(inp.shape)} vs torch: max diff {diff:.3e}")
        assert got.shape == expected.shape
        assert diff < 1e-4
