"""The built-in toy model (issue 16): its size and what its projectors are taught to emit.

The model is the reference ``MobileVideoGPT`` at a tiny size: CLIP-style tower (224 px, 16 px
patches; the toy processor squashes the whole frame to 224x224 instead of cropping its centre),
the parameter-free frame scorer, bidirectional VideoMamba (224 px, 32 px patches: 7x7 per frame,
so the official 4 frames x 49 tokens per video chunk hold), both ETP projectors and a Qwen2
decoder over the toy tokenizer's vocabulary.

Both projectors pool to one token (``image_grid`` = ``video_grid`` = 1, stored in config.json
under ``mvgpt_projector``): each of the 16 frames gives one image token and each of the two
VideoMamba chunks one video token, 18 visual tokens in all. A token is the mean of the ETP's
per-patch MLP outputs, so it summarises what its frame (or chunk) shows. ``summary`` fixes the
first ``SUMMARY`` channels of that token for training:

    presence[c]   1 if class c = (colour, shape) is visible in the frame, else 0
    area[c]       AREA x the share of the frame class c covers
    x[c], y[c]    AREA x that share times the covered patches' centres (x right, y down, -1..1)

so the per-frame area-weighted positions of every object are read from the image tokens, and
their change over the 16 frames is the motion; the decoder learns the rest (which class a
question names, the count, the direction) from these tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvgpt.models.config import (
    ClipVisionConfig,
    MobileVideoGPTConfig,
    ProjectorConfig,
    QwenConfig,
    VideoMambaConfig,
)
from mvgpt.models.toy_data import NUM_CLASSES

CLASSES = NUM_CLASSES - 1  # colour x shape, without the background
SUMMARY = 4 * CLASSES  # presence, area, x, y per class
AREA = 20.0  # scales an object's share of the frame (about 0.005-0.08) towards 1
PRESENT = 0.002  # a class covering less of the frame than this counts as not visible


@dataclass(frozen=True)
class ToySize:
    """The numbers that size the toy model (everything else follows the reference)."""

    hidden_size: int = 128  # decoder and projectors
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 8  # head_dim 16
    num_key_value_heads: int = 8  # one per head (the exporter's GQA trace needs at least 2)
    rope_theta: float = 1000000.0
    clip_hidden: int = 96
    clip_intermediate: int = 192
    clip_layers: int = 4
    clip_heads: int = 4
    mamba_dim: int = 64
    mamba_depth: int = 2
    mamba_state: int = 8
    mamba_patch: int = 32
    image_grid: int = 1
    video_grid: int = 1


def toy_config(vocab_size: int, size: ToySize | None = None) -> MobileVideoGPTConfig:
    """The reference config at the toy size; CLIP's last layer is the selected one (select -1)."""
    size = size or ToySize()
    qwen = QwenConfig(
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        vocab_size=vocab_size,
        rope_theta=size.rope_theta,
        max_position_embeddings=4096,
    )
    clip = ClipVisionConfig(
        hidden_size=size.clip_hidden,
        intermediate_size=size.clip_intermediate,
        num_hidden_layers=size.clip_layers,
        num_attention_heads=size.clip_heads,
        select_layer=-1,
        center_crop=False,
    )
    mamba = VideoMambaConfig(
        embed_dim=size.mamba_dim,
        depth=size.mamba_depth,
        d_state=size.mamba_state,
        dt_rank=-(-size.mamba_dim // 16),
        patch_size=size.mamba_patch,
        clip_decoder_dim=16,
    )
    projector = ProjectorConfig(
        video_in=size.mamba_dim,
        image_in=size.clip_hidden,
        hidden_size=size.hidden_size,
        image_grid=size.image_grid,
        video_grid=size.video_grid,
    )
    return MobileVideoGPTConfig(qwen=qwen, clip=clip, video_mamba=mamba, projector=projector)


def patch_centres(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(side, side) x and y of each patch centre in [-1, 1]."""
    c = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    ys, xs = np.meshgrid(c, c, indexing="ij")
    return xs.astype(np.float32), ys.astype(np.float32)


def summary(cover: np.ndarray) -> np.ndarray:
    """(..., side, side, 13) per-patch class cover -> (..., SUMMARY) token targets."""
    cover = np.asarray(cover, np.float32)[..., 1:]  # drop the background
    xs, ys = patch_centres(cover.shape[-2])
    area = cover.mean((-3, -2))
    x = (cover * xs[..., None]).mean((-3, -2))
    y = (cover * ys[..., None]).mean((-3, -2))
    present = (area > PRESENT).astype(np.float32)
    return np.concatenate([present, AREA * area, AREA * x, AREA * y], axis=-1)


def patch_summary(cover: np.ndarray) -> np.ndarray:
    """(..., side, side, 13) per-patch class cover -> (..., side * side, SUMMARY - CLASSES): the
    area and position channels per patch, whose mean over the patches is ``summary``'s (the
    ETP's MLP is taught these per patch; its pooling then gives the token's)."""
    cover = np.asarray(cover, np.float32)[..., 1:]
    xs, ys = patch_centres(cover.shape[-2])
    channels = [AREA * cover, AREA * cover * xs[..., None], AREA * cover * ys[..., None]]
    out = np.concatenate(channels, axis=-1)
    return out.reshape(*out.shape[:-3], -1, out.shape[-1])
