"""The CLIP ViT vision tower: the reference for ``clip_vision.onnx`` (facts file sections 1.4, 2.1).

Owns pixel_values (F, 3, 224, 224) -> patch features (F, num_patches, C) taken from
``hidden_states[select_layer]`` (layer -2 for Mobile-VideoGPT) with the CLS token dropped.
Attribute names mirror a CLIPModel checkpoint with the ``vision_model.`` prefix stripped. Only the
layers the selected output needs are run; the rest (the last layer, post_layernorm) exist as
modules so that strict loading sees every checkpoint key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models.config import ClipVisionConfig
from mvgpt.runtime.errors import CheckpointError


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class Embeddings(nn.Module):
    """Patchify with a stride-p conv, prepend the class embedding, add learned positions."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels,
            cfg.hidden_size,
            kernel_size=cfg.patch_size,
            stride=cfg.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (F, C, g, g)
        x = x.flatten(2).transpose(1, 2)  # (F, N, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # (F, 1, C)
        x = torch.cat((cls, x), dim=1)  # (F, N+1, C)
        return x + self.position_embedding.weight[None]


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with biased projections."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        shape = (batch, tokens, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (F, nh, T, hd)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # (F, nh, T, T)
        out = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v  # (F, nh, T, hd)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)  # (F, T, C)
        return self.out_proj(out)


class MLP(nn.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        if cfg.hidden_act not in ACTIVATIONS:
            raise CheckpointError(
                f"CLIP hidden_act {cfg.hidden_act!r} is not supported "
                f"(expected one of {sorted(ACTIVATIONS)}; check the CLIP config.json)"
            )
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """Holds the layers under the checkpoint's ``encoder.layers.{i}`` names."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


def selected_layer_count(cfg: ClipVisionConfig) -> int:
    """How many encoder layers produce ``hidden_states[select_layer]``.

    hidden_states has num_layers + 1 entries (entry 0 is the pre_layrnorm'd embeddings, entry i the
    output of layer i-1), so a negative select_layer picks entry num_layers + 1 + select_layer.
    """
    index = (
        cfg.select_layer if cfg.select_layer >= 0 else cfg.num_hidden_layers + 1 + cfg.select_layer
    )
    if not 0 <= index <= cfg.num_hidden_layers:
        raise CheckpointError(
            f"CLIP select_layer {cfg.select_layer} is out of range for "
            f"{cfg.num_hidden_layers} layers (expected -{cfg.num_hidden_layers + 1} .. "
            f"{cfg.num_hidden_layers}; check mm_vision_select_layer in config.json)"
        )
    return index


class ClipVisionTower(nn.Module):
    """pixel_values (F, 3, H, W) -> hidden_states[select_layer] without CLS: (F, num_patches, C)."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_layers_run = selected_layer_count(cfg)
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic, as CLIP
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # unused

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # (F, N+1, C)
        for layer in self.encoder.layers[: self.num_layers_run]:
            x = layer(x)
        return x[:, 1:]  # (F, N, C): CLS dropped
