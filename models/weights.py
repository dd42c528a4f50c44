"""The official weight layout: every key the checkpoint and the CLIP folder must hold, with its
shape, computed from the configs (facts file section 3). Both the strict loader and the random
checkpoint writer use this one table, so they cannot drift apart.
"""

from __future__ import annotations

from mvgpt.models.config import (
    ClipVisionConfig,
    MobileVideoGPTConfig,
    QwenConfig,
    VideoMambaConfig,
)

Shape = tuple[int, ...]

QWEN_PREFIX = "model."
VIDEO_MAMBA_PREFIX = "model.vision_tower.vision_encoder."
VIDEO_PROJECTOR_PREFIX = "model.mm_projector."
IMAGE_PROJECTOR_PREFIX = "model.image_mm_projector."
CLIP_PREFIX = "vision_model."

# Present in real files but unused at inference, ignored on purpose (facts 3.1, 3.2, 1.1).
CHECKPOINT_IGNORED_PREFIXES = (
    VIDEO_MAMBA_PREFIX + "clip_decoder.",  # VideoMamba's unused CLIP-distillation head
    "model.image_vision_tower.",  # CLIP always comes from the CLIP folder, as in the official code
)
CLIP_IGNORED_PREFIXES = (
    "text_model.",
    "visual_projection.",
    "text_projection.",
    "logit_scale",
    CLIP_PREFIX + "embeddings.position_ids",  # a buffer some checkpoints carry
)


def qwen_shapes(cfg: QwenConfig) -> dict[str, Shape]:
    """Decoder keys without the ``model.`` prefix (plus ``lm_head.weight`` when untied)."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    shapes: dict[str, Shape] = {"embed_tokens.weight": (v, h), "norm.weight": (h,)}
    for n in range(cfg.num_hidden_layers):
        p = f"layers.{n}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q_dim, h),
                p + "self_attn.q_proj.bias": (q_dim,),
                p + "self_attn.k_proj.weight": (kv_dim, h),
                p + "self_attn.k_proj.bias": (kv_dim,),
                p + "self_attn.v_proj.weight": (kv_dim, h),
                p + "self_attn.v_proj.bias": (kv_dim,),
                p + "self_attn.o_proj.weight": (h, q_dim),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    return shapes


def video_mamba_shapes(cfg: VideoMambaConfig) -> dict[str, Shape]:
    """VideoMamba keys without the ``model.vision_tower.vision_encoder.`` prefix."""
    c, e, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    shapes: dict[str, Shape] = {
        "patch_embed.proj.weight": (c, 3, 1, cfg.patch_size, cfg.patch_size),
        "patch_embed.proj.bias": (c,),
        "cls_token": (1, 1, c),
        "pos_embed": (1, cfg.num_patches + 1, c),
        "temporal_pos_embedding": (1, cfg.num_frames, c),
        "norm.weight": (c,),
    }
    for layer in range(cfg.depth):
        p = f"layers.{layer}."
        shapes[p + "norm.weight"] = (c,)
        m = p + "mixer."
        shapes[m + "in_proj.weight"] = (2 * e, c)
        shapes[m + "out_proj.weight"] = (c, e)
        for sfx in ("", "_b"):  # forward and backward direction
            shapes[m + f"conv1d{sfx}.weight"] = (e, 1, k)
            shapes[m + f"conv1d{sfx}.bias"] = (e,)
            shapes[m + f"x_proj{sfx}.weight"] = (r + 2 * n, e)
            shapes[m + f"dt_proj{sfx}.weight"] = (e, r)
            shapes[m + f"dt_proj{sfx}.bias"] = (e,)
            shapes[m + ("A_log" if not sfx else "A_b_log")] = (e, n)
            shapes[m + ("D" if not sfx else "D_b")] = (e,)
    return shapes


def clip_decoder_shapes(cfg: VideoMambaConfig) -> dict[str, Shape]:
    """The unused distillation head the official file carries (written by the random writer)."""
    d = cfg.clip_decoder_dim
    return {
        "clip_decoder.0.head.weight": (d, cfg.embed_dim),
        "clip_decoder.0.head.bias": (d,),
        "clip_decoder.0.norm.weight": (d,),
        "clip_decoder.0.norm.bias": (d,),
    }


def projector_shapes(in_dim: int, hidden: int) -> dict[str, Shape]:
    """One ETP projector's keys without its prefix."""
    return {
        "mlp.mlp.0.weight": (hidden, in_dim),
        "mlp.mlp.0.bias": (hidden,),
        "mlp.mlp.2.weight": (hidden, hidden),
        "mlp.mlp.2.bias": (hidden,),
        "peg.peg.0.weight": (hidden, 1, 3, 3),
        "peg.peg.0.bias": (hidden,),
    }


def clip_shapes(cfg: ClipVisionConfig) -> dict[str, Shape]:
    """CLIP vision keys without the ``vision_model.`` prefix."""
    c, i, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    shapes: dict[str, Shape] = {
        "embeddings.class_embedding": (c,),
        "embeddings.patch_embedding.weight": (c, cfg.num_channels, p, p),
        "embeddings.position_embedding.weight": (cfg.num_patches + 1, c),
        "pre_layrnorm.weight": (c,),
        "pre_layrnorm.bias": (c,),
        "post_layernorm.weight": (c,),
        "post_layernorm.bias": (c,),
    }
    for n in range(cfg.num_hidden_layers):
        q = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[q + f"self_attn.{proj}.weight"] = (c, c)
            shapes[q + f"self_attn.{proj}.bias"] = (c,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[q + f"{norm}.weight"] = (c,)
            shapes[q + f"{norm}.bias"] = (c,)
        shapes.update(
            {
                q + "mlp.fc1.weight": (i, c),
                q + "mlp.fc1.bias": (i,),
                q + "mlp.fc2.weight": (c, i),
                q + "mlp.fc2.bias": (c,),
            }
        )
    return shapes


def checkpoint_shapes(cfg: MobileVideoGPTConfig) -> dict[str, Shape]:
    """Every key the official checkpoint must hold (full names), with its shape."""
    shapes = {QWEN_PREFIX + k: s for k, s in qwen_shapes(cfg.qwen).items()}
    if not cfg.qwen.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.qwen.vocab_size, cfg.qwen.hidden_size)
    shapes.update(
        {VIDEO_MAMBA_PREFIX + k: s for k, s in video_mamba_shapes(cfg.video_mamba).items()}
    )
    proj = cfg.projector
    for prefix, in_dim in (
        (VIDEO_PROJECTOR_PREFIX, proj.video_in),
        (IMAGE_PROJECTOR_PREFIX, proj.image_in),
    ):
        shapes.update(
            {prefix + k: s for k, s in projector_shapes(in_dim, proj.hidden_size).items()}
        )
    return shapes


def clip_checkpoint_shapes(cfg: ClipVisionConfig) -> dict[str, Shape]:
    """Every key the CLIP folder's vision part must hold (full names), with its shape."""
    return {CLIP_PREFIX + k: s for k, s in clip_shapes(cfg).items()}
