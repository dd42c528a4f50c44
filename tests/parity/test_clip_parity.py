"""ClipVisionTower against transformers' CLIPVisionModel, tiny random weights, fp32.

Ours must equal ``hidden_states[-2][:, 1:]`` (layer -2, CLS dropped), and differ from layer -1.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mvgpt.models.clip import ClipVisionTower
from mvgpt.models.config import ClipVisionConfig
from mvgpt.runtime.errors import CheckpointError

transformers = pytest.importorskip("transformers")

TOL = 1e-4
CFG = ClipVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=224,
    patch_size=16,
    hidden_act="quick_gelu",
    select_layer=-2,
)


def build_pair(cfg: ClipVisionConfig = CFG):
    """Our tower with random weights, and transformers' model holding the same weights."""
    torch.manual_seed(0)
    ours = ClipVisionTower(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():  # layer norms and biases random too
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.5)
    hf_cfg = transformers.CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        attn_implementation="eager",
    )
    hf = transformers.CLIPVisionModel(hf_cfg).eval()
    hf_tower(hf).load_state_dict(ours.state_dict(), strict=True)
    return ours, hf


def hf_tower(hf) -> torch.nn.Module:
    """The module whose keys are the checkpoint's ``vision_model.*`` minus the prefix.

    transformers 4.x nests it as ``CLIPVisionModel.vision_model``; 5.x flattens it into the model.
    """
    return getattr(hf, "vision_model", hf)


def compare(cfg: ClipVisionConfig) -> tuple[float, float]:
    """max|diff| of ours vs hidden_states[-2][:, 1:] and vs hidden_states[-1][:, 1:]."""
    ours, hf = build_pair(cfg)
    pixel_values = torch.randn(
        3, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        got = ours(pixel_values)
        hidden = hf(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    assert len(hidden) == cfg.num_hidden_layers + 1
    assert got.shape == (3, cfg.num_patches, cfg.hidden_size)
    want, last = hidden[-2][:, 1:], hidden[-1][:, 1:]
    return (got - want).abs().max().item(), (got - last).abs().max().item()


def test_state_dict_keys_match_transformers():
    ours, hf = build_pair()
    theirs = hf_tower(hf).state_dict()  # position_ids is a non-persistent buffer, not listed
    assert set(ours.state_dict()) == set(theirs)
    for k, v in ours.state_dict().items():
        assert v.shape == theirs[k].shape, k


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_layer_minus_two_matches_transformers(act):
    diff, diff_last = compare(dataclasses.replace(CFG, hidden_act=act))
    print(f"\nclip ({act}) vs hidden_states[-2] max|diff| {diff:.3e}; vs [-1] {diff_last:.3e}")
    assert diff < TOL
    assert diff_last > 1e-2  # layer -1 differs, so the test tells the layers apart


def test_select_layer_minus_one_runs_every_layer():
    diff, diff_last = compare(dataclasses.replace(CFG, select_layer=-1))
    print(f"\nclip select_layer=-1 vs hidden_states[-1] max|diff| {diff_last:.3e}")
    assert diff_last < TOL and diff > 1e-2


def test_bad_config_is_refused():
    with pytest.raises(CheckpointError, match="select_layer"):
        ClipVisionTower(dataclasses.replace(CFG, select_layer=-5))
    with pytest.raises(CheckpointError, match="hidden_act"):
        ClipVisionTower(dataclasses.replace(CFG, hidden_act="relu"))
