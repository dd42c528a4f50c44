"""VideoMamba-M reference: shapes, weight names, bidirectional mixer, causal conv, block wiring,
the scan reference against a naive loop, and a legacy ONNX export of a tiny model."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from mvgpt.models.config import VideoMambaConfig
from mvgpt.models.scan import selective_scan_ref
from mvgpt.models.videomamba import BiMambaMixer, VideoMamba
from mvgpt.runtime.manifest import OPSET

TINY = VideoMambaConfig(embed_dim=32, depth=2, d_state=4, expand=2, dt_rank=2)
REAL_LAYER_PARAMS = 2_283_840
REAL_NON_LAYER_PARAMS = 562_176  # patch_embed + cls + pos + temporal + final norm


def _tiny(seed: int = 0, cfg: VideoMambaConfig = TINY) -> VideoMamba:
    torch.manual_seed(seed)
    return VideoMamba(cfg).eval()


def _pixels(cfg: VideoMambaConfig, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=g)


def test_scan_ref_matches_naive_numpy_loop():
    rng = np.random.default_rng(0)
    b, d, n, length = 2, 3, 4, 7
    u, delta, z = (rng.standard_normal((b, d, length)) for _ in range(3))
    A = -np.exp(rng.standard_normal((d, n)))
    B, C = rng.standard_normal((b, n, length)), rng.standard_normal((b, n, length))
    D, delta_bias = rng.standard_normal(d), rng.standard_normal(d)

    expected = np.zeros((b, d, length))
    for bi in range(b):
        for di in range(d):
            h = np.zeros(n)
            for t in range(length):
                dt = np.log1p(np.exp(delta[bi, di, t] + delta_bias[di]))  # softplus
                h = np.exp(dt * A[di]) * h + dt * B[bi, :, t] * u[bi, di, t]
                y = h @ C[bi, :, t] + D[di] * u[bi, di, t]
                expected[bi, di, t] = y * z[bi, di, t] / (1 + np.exp(-z[bi, di, t]))

    args = [torch.tensor(a, dtype=torch.float32) for a in (u, delta, A, B, C, D, z, delta_bias)]
    got = selective_scan_ref(*args, delta_softplus=True).double().numpy()
    diff = np.abs(got - expected).max()
    print(f"scan ref vs numpy loop: max diff {diff:.3e}")
    assert diff < 1e-5


def test_state_dict_names_and_real_param_counts():
    names = set(_tiny().state_dict())
    mixer_keys = ["in_proj.weight", "out_proj.weight"]
    for suffix in ("", "_b"):
        mixer_keys += [
            f"conv1d{suffix}.weight",
            f"conv1d{suffix}.bias",
            f"x_proj{suffix}.weight",
            f"dt_proj{suffix}.weight",
            f"dt_proj{suffix}.bias",
            f"D{suffix}",
        ]
    mixer_keys += ["A_log", "A_b_log"]
    per_layer = {"norm.weight", *(f"mixer.{k}" for k in mixer_keys)}
    expected = {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "cls_token",
        "pos_embed",
        "temporal_pos_embedding",
        "norm.weight",
    }
    expected |= {f"layers.{i}.{k}" for i in range(TINY.depth) for k in per_layer}
    assert names == expected, names ^ expected

    real = VideoMamba(VideoMambaConfig(depth=1))
    shapes = {k: tuple(v.shape) for k, v in real.state_dict().items()}
    assert shapes["layers.0.mixer.in_proj.weight"] == (2304, 576)
    assert shapes["layers.0.mixer.conv1d.weight"] == (1152, 1, 4)
    assert shapes["layers.0.mixer.x_proj_b.weight"] == (68, 1152)
    assert shapes["layers.0.mixer.dt_proj.weight"] == (1152, 36)
    assert shapes["layers.0.mixer.A_b_log"] == (1152, 16)
    assert shapes["layers.0.mixer.out_proj.weight"] == (576, 1152)
    assert shapes["patch_embed.proj.weight"] == (576, 3, 1, 16, 16)
    assert shapes["pos_embed"] == (1, 197, 576)
    assert shapes["temporal_pos_embedding"] == (1, 8, 576)
    total = sum(p.numel() for p in real.parameters())
    assert total == REAL_NON_LAYER_PARAMS + REAL_LAYER_PARAMS
    assert REAL_NON_LAYER_PARAMS + 32 * REAL_LAYER_PARAMS == 73_645_056  # facts §7.10


def test_tiny_forward_shapes_and_batch_independence():
    model = _tiny()
    x = _pixels(TINY, batch=2)
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
        single = model(x[1:])
    assert out.shape == (2, 1 + 8 * 196, 32)
    assert feats.shape == (16, 196, 32)
    assert torch.equal(feats, out[:, 1:].reshape(16, 196, 32))
    diff = (out[1:] - single).abs().max().item()
    print(f"batch of 2 vs alone: max diff {diff:.3e}")
    assert diff < 1e-5


def test_embedding_layout():
    """CLS first (cls_token + pos_embed[0]); frame t's patches get pos_embed[1:] + temporal[t]."""
    model = _tiny()
    x = _pixels(TINY)
    with torch.no_grad():
        seq = model.embed(x)
        patches = model.patch_embed.proj(x)[0, :, 3].flatten(1).T  # frame 3: (196, C)
        expected = patches + model.pos_embed[0, 1:] + model.temporal_pos_embedding[0, 3]
    assert torch.allclose(seq[0, 0], model.cls_token[0, 0] + model.pos_embed[0, 0])
    diff = (seq[0, 1 + 3 * 196 : 1 + 4 * 196] - expected).abs().max().item()
    print(f"frame 3 embedding: max diff {diff:.3e}")
    assert diff < 1e-5


class _Double(nn.Module):
    def forward(self, h):
        return 2.0 * h


def test_block_wiring_prenorm_fp32_residual():
    model = _tiny()
    for layer in model.layers:
        layer.mixer = _Double()
        nn.init.normal_(layer.norm.weight)
    nn.init.normal_(model.norm.weight)
    x = _pixels(TINY)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    with torch.no_grad():
        r = model.embed(x)
        h = 2.0 * rms(r, model.layers[0].norm.weight)
        r = r + h
        h = 2.0 * rms(r, model.layers[1].norm.weight)
        expected = rms(r + h, model.norm.weight)
        got = model(x)
    diff = (got - expected).abs().max().item()
    print(f"block wiring: max diff {diff:.3e}")
    assert diff < 1e-5


def _mixer_and_input(seed: int = 0) -> tuple[BiMambaMixer, torch.Tensor]:
    torch.manual_seed(seed)
    mixer = BiMambaMixer(TINY).eval()
    h = torch.randn(1, 1 + 8 * 196, TINY.embed_dim)
    return mixer, h


def test_backward_direction_matters():
    mixer, h = _mixer_and_input()
    with torch.no_grad():
        base = mixer(h)
        y_f, _ = mixer.branches(h)
        forward_only = mixer.out_proj(y_f.transpose(1, 2))
        d_fwd_only = (base - forward_only).abs().max().item()
        mixer.A_b_log.add_(0.5)
        d_a = (mixer(h) - base).abs().max().item()
        mixer.A_b_log.sub_(0.5)
        mixer.x_proj_b.weight.mul_(1.5)
        d_x = (mixer(h) - base).abs().max().item()
    print(
        f"forward-only vs bimamba {d_fwd_only:.3e}; A_b_log perturbed {d_a:.3e}; "
        f"x_proj_b perturbed {d_x:.3e}"
    )
    assert d_fwd_only > 1e-3 and d_a > 1e-4 and d_x > 1e-4


def test_backward_direction_is_the_forward_one_on_the_reversed_sequence():
    """Swapping the forward and *_b weights and reversing time gives the reversed output."""
    mixer, h = _mixer_and_input()
    swapped = BiMambaMixer(TINY).eval()
    sd = mixer.state_dict()
    pairs = [
        ("conv1d.weight", "conv1d_b.weight"),
        ("conv1d.bias", "conv1d_b.bias"),
        ("x_proj.weight", "x_proj_b.weight"),
        ("dt_proj.weight", "dt_proj_b.weight"),
        ("dt_proj.bias", "dt_proj_b.bias"),
        ("A_log", "A_b_log"),
        ("D", "D_b"),
    ]
    new = dict(sd)
    for a, b in pairs:
        new[a], new[b] = sd[b], sd[a]
    swapped.load_state_dict(new)
    with torch.no_grad():
        got = swapped(h.flip(1)).flip(1)
        expected = mixer(h)
    diff = (got - expected).abs().max().item()
    print(f"swap directions + reverse time: max diff {diff:.3e}")
    assert diff < 1e-4


def test_forward_branch_is_causal():
    """Changing frame 7 leaves the forward branch unchanged before it; the backward sees it."""
    mixer, h = _mixer_and_input()
    start = 1 + 7 * 196
    h2 = h.clone()
    h2[:, start:] += torch.randn_like(h2[:, start:])
    with torch.no_grad():
        f1, b1 = mixer.branches(h)
        f2, b2 = mixer.branches(h2)
    d_before = (f1[..., :start] - f2[..., :start]).abs().max().item()
    d_after = (f1[..., start:] - f2[..., start:]).abs().max().item()
    d_back = (b1[..., :start] - b2[..., :start]).abs().max().item()
    print(
        f"forward branch before frame 7: {d_before:.3e}, at/after: {d_after:.3e}; "
        f"backward branch before frame 7: {d_back:.3e}"
    )
    assert d_before == 0.0
    assert d_after > 1e-4 and d_back > 1e-6


def test_real_widths_one_layer_shapes():
    model = _tiny(cfg=VideoMambaConfig(depth=1))
    x = _pixels(VideoMambaConfig(), batch=1)
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
    assert out.shape == (1, 1569, 576)
    assert feats.shape == (8, 196, 576)
    assert torch.isfinite(out).all()
    diff = (feats - out[0, 1:].reshape(8, 196, 576)).abs().max().item()
    print(f"real widths: features vs forward[:, 1:]: max diff {diff:.3e}")
    assert diff < 1e-6


@pytest.mark.filterwarnings("ignore")
def test_tiny_exports_with_legacy_onnx_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    cfg = replace(TINY, img_size=32)  # 4 patches per frame: the unrolled reference scan stays small
    model = _tiny(cfg=cfg)
    x = _pixels(cfg, batch=1)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixel_values"],
            output_names=["last_hidden_state"],
            dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}},
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x2 = _pixels(cfg, batch=2, seed=5)
    for inp in (x, x2):
        got = sess.run(None, {"pixel_values": inp.numpy()})[0]
        with torch.no_grad():
            expected = model(inp).numpy()
        diff = np.abs(got - expected).max()
        print(f"VideoMamba tiny ONNX (batch {inp.shape[0]}) vs torch: max diff {diff:.3e}")
        assert got.shape == expected.shape
        assert diff < 1e-4
