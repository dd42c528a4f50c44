"""One small ``nn.Module`` per exported graph, with every input and output explicit and named
(the sherpa-onnx habit). Each wrapper also knows how to make example inputs and its graph I/O
description (names, dtypes, symbolic shapes) for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mvgpt.exporter.attention import GqaDecoder
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.runtime import manifest as M


@dataclass(frozen=True)
class TensorSpec:
    role: str  # manifest.R_*: what the tensor is to a runtime
    dtype: str  # numpy dtype name
    shape: tuple  # ints or symbolic names
    layer: int | None = None  # the decoder's cache tensors: their layer

    @property
    def name(self) -> str:
        """The graph's name for the tensor: its role's (with the layer, for cache tensors)."""
        return self.role if self.layer is None else M.cache_name(self.role, self.layer)

    def to_dict(self) -> dict:
        entry = {M.S_NAME: self.name, M.S_ROLE: self.role}
        if self.layer is not None:
            entry[M.S_LAYER] = self.layer
        return {**entry, M.S_DTYPE: self.dtype, M.S_SHAPE: list(self.shape)}


@dataclass
class GraphSpec:
    """What the exporter needs to know about one stage's graph."""

    stage: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: tuple  # example inputs for tracing (and validation shapes)
    # what is traced, when it differs from ``module`` (the reference the graph is validated
    # against): the decoder's GQA form
    export_module: nn.Module | None = None
    custom_opsets: dict[str, int] | None = None  # non-standard op domains the graph uses

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {}
        for spec in self.inputs + self.outputs:
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            if named:
                axes[spec.name] = named
        return axes


class ClipVisionGraph(nn.Module):
    def __init__(self, model: MobileVideoGPT):
        super().__init__()
        self.clip = model.clip

    def forward(self, pixel_values):  # (F, 3, 224, 224) -> (F, 196, C)
        return self.clip(pixel_values)


class FrameScorerGraph(nn.Module):
    def __init__(self, model: MobileVideoGPT):
        super().__init__()
        self.scorer = model.frame_scorer

    def forward(self, image_features):  # (chunks, 8*196, C) -> (chunks, 8)
        return self.scorer(image_features)


class VideoMambaGraph(nn.Module):
    def __init__(self, model: MobileVideoGPT):
        super().__init__()
        self.video_mamba = model.video_mamba

    def forward(self, pixel_values):  # (1, 3, 8, 224, 224) -> (8, 196, 576)
        return self.video_mamba.features(pixel_values)


class ProjectorGraph(nn.Module):
    def __init__(self, projector: nn.Module):
        super().__init__()
        self.projector = projector

    def forward(self, features):
        return self.projector(features)


class EmbedTokensGraph(nn.Module):
    def __init__(self, model: MobileVideoGPT):
        super().__init__()
        self.embed_tokens = model.decoder.embed_tokens

    def forward(self, input_ids):  # (B, S) -> (B, S, H)
        return self.embed_tokens(input_ids)


class DecoderGraph(nn.Module):
    """inputs_embeds, attention_mask (one column per position in use, all ones), flat
    past_key_values.{i}.key/value, ``num_logits_to_keep`` (0: logits for every position; k: the
    last k) -> logits and flat present.{i}.key/value. Positions are implied: the new ones follow
    the past. ``gqa`` selects the exported form (exporter/attention.py); the default is the
    reference decoder."""

    def __init__(self, model: MobileVideoGPT, gqa: bool = False):
        super().__init__()
        self.gqa = GqaDecoder(model.decoder) if gqa else None
        self.decoder = model.decoder
        self.num_layers = model.cfg.qwen.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, *rest):
        past_flat, keep = rest[:-1], rest[-1]
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.num_layers)]
        if self.gqa is not None:
            logits, presents = self.gqa(inputs_embeds, attention_mask, past, keep)
        else:
            seq, total = inputs_embeds.shape[1], attention_mask.shape[1]
            positions = torch.arange(total - seq, total).expand(inputs_embeds.shape[0], seq)
            logits, presents = self.decoder(inputs_embeds, attention_mask, positions, past, keep)
        flat = [t for kv in presents for t in kv]
        return (logits, *flat)


def graph_specs(model: MobileVideoGPT) -> list[GraphSpec]:
    """Every stage's wrapper, I/O and example inputs, in data-flow order."""
    cfg = model.cfg
    sel, clip, vm, proj, qwen = cfg.selection, cfg.clip, cfg.video_mamba, cfg.projector, cfg.qwen
    size, patches = clip.image_size, clip.num_patches
    hidden, f32, i64 = qwen.hidden_size, "float32", "int64"
    frames_per_chunk = sel.chunk_size
    pixel = torch.randn(sel.num_frames, 3, size, size)
    specs = [
        GraphSpec(
            M.CLIP_VISION,
            ClipVisionGraph(model),
            [TensorSpec(M.R_PIXEL_VALUES, f32, ("num_frames", 3, size, size))],
            [TensorSpec(M.R_IMAGE_FEATURES, f32, ("num_frames", patches, clip.hidden_size))],
            (pixel,),
        ),
        GraphSpec(
            M.FRAME_SCORER,
            FrameScorerGraph(model),
            [
                TensorSpec(
                    M.R_IMAGE_FEATURES,
                    f32,
                    ("num_chunks", frames_per_chunk * patches, clip.hidden_size),
                )
            ],
            [TensorSpec(M.R_FRAME_SCORES, f32, ("num_chunks", frames_per_chunk))],
            (torch.randn(sel.num_chunks, frames_per_chunk * patches, clip.hidden_size),),
        ),
        GraphSpec(
            M.VIDEO_MAMBA,
            VideoMambaGraph(model),
            [TensorSpec(M.R_PIXEL_VALUES, f32, (1, 3, vm.num_frames, vm.img_size, vm.img_size))],
            [TensorSpec(M.R_VIDEO_FEATURES, f32, (vm.num_frames, vm.num_patches, vm.embed_dim))],
            (torch.randn(1, 3, vm.num_frames, vm.img_size, vm.img_size),),
        ),
        GraphSpec(
            M.IMAGE_PROJECTOR,
            ProjectorGraph(model.image_projector),
            [TensorSpec(M.R_IMAGE_FEATURES, f32, ("num_frames", patches, proj.image_in))],
            [TensorSpec(M.R_IMAGE_TOKENS, f32, ("num_frames", proj.image_grid**2, hidden))],
            (torch.randn(sel.num_frames, patches, proj.image_in),),
        ),
        GraphSpec(
            M.VIDEO_PROJECTOR,
            ProjectorGraph(model.video_projector),
            [TensorSpec(M.R_VIDEO_FEATURES, f32, (vm.num_frames, vm.num_patches, proj.video_in))],
            [TensorSpec(M.R_VIDEO_TOKENS, f32, (sel.num_chunks, proj.video_grid**2, hidden))],
            (torch.randn(vm.num_frames, vm.num_patches, proj.video_in),),
        ),
        GraphSpec(
            M.EMBED_TOKENS,
            EmbedTokensGraph(model),
            [TensorSpec(M.R_INPUT_IDS, i64, ("batch", "sequence"))],
            [TensorSpec(M.R_INPUTS_EMBEDS, f32, ("batch", "sequence", hidden))],
            (torch.randint(0, qwen.vocab_size, (1, 5)),),
        ),
    ]
    kv, hd, layers = qwen.num_key_value_heads, qwen.head_dim, qwen.num_hidden_layers
    past_in, present_out, past_example = [], [], []
    for i in range(layers):
        for past, present in zip(M.CACHE_INPUT_ROLES, M.CACHE_OUTPUT_ROLES, strict=True):
            # past: the cache buffer, at least the positions in use; present: the buffer again
            # when it is bound to past (shared), else max(buffer, positions in use) long
            past_in.append(TensorSpec(past, f32, ("batch", kv, "past_buffer", hd), i))
            present_out.append(TensorSpec(present, f32, ("batch", kv, "present_buffer", hd), i))
            past_example.append(torch.randn(1, kv, 3, hd))
    seq = 4
    specs.append(
        GraphSpec(
            M.DECODER,
            DecoderGraph(model),
            [
                TensorSpec(M.R_INPUTS_EMBEDS, f32, ("batch", "sequence", hidden)),
                TensorSpec(M.R_ATTENTION_MASK, i64, ("batch", "total_sequence")),
                *past_in,
                TensorSpec(M.R_NUM_LOGITS_TO_KEEP, i64, ()),
            ],
            [TensorSpec(M.R_LOGITS, f32, ("batch", "sequence", qwen.vocab_size)), *present_out],
            (
                torch.randn(1, seq, hidden),
                torch.ones(1, 3 + seq, dtype=torch.int64),
                *past_example,
                torch.tensor(0, dtype=torch.int64),
            ),
            export_module=DecoderGraph(model, gqa=True),
            custom_opsets={M.CUSTOM_OP_DOMAIN: 1},
        )
    )
    return specs
