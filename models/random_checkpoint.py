"""Write a random checkpoint in the official Mobile-VideoGPT layout, plus a CLIP folder in the
layout of openai/clip-vit-base-patch16. Tests and demos use it: no weights can be downloaded here.

    python -m mvgpt.models.random_checkpoint --size {tiny,0.5b,1.5b} --out DIR [--seed N]
        [--layers N]

writes DIR/checkpoint/ (config.json, model.safetensors or shards + index, tokenizer.json,
generation_config.json) and DIR/clip/ (config.json, model.safetensors, preprocessor_config.json).
The LLM and projectors are stored in fp16 and VideoMamba in fp32, as in the published files.
``1.5b`` has Mobile-VideoGPT-1.5B's shapes (Qwen2.5-1.5B-Instruct: hidden 1536, 28 layers, 12
heads, 2 KV heads, intermediate 8960; projectors to 1536); ``--layers`` keeps the shapes of every
matrix and cuts the decoder to N layers (tests at real width in little time and memory).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from mvgpt.models import weights as W
from mvgpt.models.config import (
    PROJECTOR_CONFIG_KEY,
    VIDEO_MAMBA_CONFIG_KEY,
    ClipVisionConfig,
    MobileVideoGPTConfig,
    ProjectorConfig,
    QwenConfig,
    VideoMambaConfig,
)
from mvgpt.models.random_tokenizer import build_tokenizer
from mvgpt.runtime.preprocess import CLIP_MEAN, CLIP_STD

SIZES = ("tiny", "0.5b", "1.5b")
QWEN_15B = QwenConfig(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
)
W_SINGLE = "model.safetensors"
GENERATION_CONFIG = {  # Qwen2.5-Instruct's generation_config.json values
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.1,
}


def size_config(size: str, layers: int | None = None) -> MobileVideoGPTConfig:
    """The model shapes for a named size: ``tiny`` for fast tests, ``0.5b`` and ``1.5b`` the real
    ones; ``layers`` overrides the decoder's number of layers."""
    cfg = _size_config(size)
    if layers is None:
        return cfg
    if layers < 1:
        raise ValueError(f"layers: expected at least 1, got {layers}")
    return replace(cfg, qwen=replace(cfg.qwen, num_hidden_layers=layers))


def _size_config(size: str) -> MobileVideoGPTConfig:
    if size == "0.5b":
        return MobileVideoGPTConfig()
    if size == "1.5b":
        hidden = QWEN_15B.hidden_size
        return MobileVideoGPTConfig(qwen=QWEN_15B, projector=ProjectorConfig(hidden_size=hidden))
    if size != "tiny":
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    qwen = QwenConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    clip = ClipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2
    )
    video_mamba = VideoMambaConfig(
        embed_dim=32, depth=2, d_state=4, expand=2, dt_rank=2, clip_decoder_dim=16
    )
    projector = ProjectorConfig(video_in=32, image_in=32, hidden_size=64)
    return MobileVideoGPTConfig(qwen=qwen, clip=clip, video_mamba=video_mamba, projector=projector)


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Values with the statistics a trained model of this kind would roughly have."""
    name = key.rsplit(".", 1)[-1] if "." in key else key
    if name in ("A_log", "A_b_log"):  # S4D-real: A = -(1..N) per channel
        d, n = shape
        return torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)
    if name in ("D", "D_b"):
        return torch.ones(shape)
    if "dt_proj" in key and name == "bias":  # softplus^-1 of dt, log-uniform in [1e-3, 1e-1]
        dt = torch.exp(torch.rand(shape, generator=gen) * math.log(100.0) + math.log(1e-3))
        return dt + torch.log(-torch.expm1(-dt))
    if "dt_proj" in key:
        bound = shape[1] ** -0.5
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound
    if "conv1d" in key and name == "weight":
        return (torch.rand(shape, generator=gen) * 2 - 1) * shape[-1] ** -0.5
    if ("norm" in key or "layrnorm" in key) and name == "weight":
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    return 0.02 * torch.randn(shape, generator=gen)


def _tensors(shapes: dict[str, tuple[int, ...]], gen, dtype) -> dict[str, torch.Tensor]:
    return {k: _random_tensor(k, s, gen).to(dtype).contiguous() for k, s in shapes.items()}


def _checkpoint_config(cfg: MobileVideoGPTConfig, size: str) -> dict:
    data = {
        "architectures": ["MobileVideoGPTQwenForCausalLM"],
        "model_type": "MobileVideoGPT_qwen",
        **asdict(cfg.qwen),
        "hidden_act": "silu",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "rope_scaling": None,
        "use_sliding_window": False,
        "torch_dtype": "float16",
        "mm_vision_tower": "OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth",
        "image_mm_vision_tower": "openai/clip-vit-base-patch16",
        "mm_projector_type": "etp",
        "image_mm_projector_type": "etp",
        "mm_hidden_size": cfg.clip.hidden_size,
        "image_mm_hidden_size": cfg.clip.hidden_size,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "mvgpt_random_weights": True,
    }
    if cfg.video_mamba != VideoMambaConfig():  # VideoMamba-M's sizes are code constants; only
        data[VIDEO_MAMBA_CONFIG_KEY] = asdict(cfg.video_mamba)  # smaller ones are stored
    grids = {"image_grid": cfg.projector.image_grid, "video_grid": cfg.projector.video_grid}
    if grids != {
        "image_grid": ProjectorConfig.image_grid,
        "video_grid": ProjectorConfig.video_grid,
    }:
        data[PROJECTOR_CONFIG_KEY] = grids  # the official pooling is a code constant too
    return data


def _clip_config(clip: ClipVisionConfig) -> dict:
    vision = {k: v for k, v in asdict(clip).items() if k != "select_layer"}
    vision.update({"model_type": "clip_vision_model", "projection_dim": 512})
    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 8,
        "model_type": "clip_text_model",
        "projection_dim": 512,
    }
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 512,
        "vision_config": vision,
        "text_config": text,
        "mvgpt_random_weights": True,
    }


def _clip_text_stub(gen, vision_hidden: int) -> dict[str, torch.Tensor]:
    """A minimal text tower, so the folder holds a whole CLIPModel whose extras get ignored."""
    shapes = {
        "text_model.embeddings.token_embedding.weight": (64, 16),
        "text_model.embeddings.position_embedding.weight": (8, 16),
        "text_model.final_layer_norm.weight": (16,),
        "text_model.final_layer_norm.bias": (16,),
        "visual_projection.weight": (512, vision_hidden),
        "text_projection.weight": (512, 16),
        "logit_scale": (),
    }
    return {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def write_random_checkpoint(
    out: str | Path, size: str = "tiny", seed: int = 0, layers: int | None = None
) -> tuple[Path, Path]:
    """Write both folders under ``out``; return (checkpoint_dir, clip_dir). ``layers``: the
    decoder's number of layers (default: the size's)."""
    cfg = size_config(size, layers)
    out = Path(out)
    ckpt_dir, clip_dir = out / "checkpoint", out / "clip"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    shapes = W.checkpoint_shapes(cfg)
    mamba_keys = {k: s for k, s in shapes.items() if k.startswith(W.VIDEO_MAMBA_PREFIX)}
    mamba_keys.update(
        {W.VIDEO_MAMBA_PREFIX + k: s for k, s in W.clip_decoder_shapes(cfg.video_mamba).items()}
    )
    half_keys = {k: s for k, s in shapes.items() if not k.startswith(W.VIDEO_MAMBA_PREFIX)}
    mamba = _tensors(mamba_keys, gen, torch.float32)
    half = _tensors(half_keys, gen, torch.float16)
    meta = {"format": "pt"}
    if size == "tiny":
        save_file({**half, **mamba}, str(ckpt_dir / W_SINGLE), metadata=meta)
    else:  # sharded, as the published 0.5B/1.5B folders may be
        shards = {
            "model-00001-of-00002.safetensors": half,
            "model-00002-of-00002.safetensors": mamba,
        }
        weight_map = {}
        for name, tensors in shards.items():
            save_file(tensors, str(ckpt_dir / name), metadata=meta)
            weight_map.update({k: name for k in tensors})
        total = sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (ckpt_dir / "config.json").write_text(json.dumps(_checkpoint_config(cfg, size), indent=2))
    (ckpt_dir / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    build_tokenizer().save(str(ckpt_dir / "tokenizer.json"))

    clip = _tensors(W.clip_checkpoint_shapes(cfg.clip), gen, torch.float32)
    clip.update(_clip_text_stub(gen, cfg.clip.hidden_size))
    save_file(clip, str(clip_dir / W_SINGLE), metadata=meta)
    (clip_dir / "config.json").write_text(json.dumps(_clip_config(cfg.clip), indent=2))
    preprocessor = preprocessor_config(cfg.clip)
    (clip_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return ckpt_dir, clip_dir


PREPROCESSOR = {  # openai/clip-vit-base-patch16's preprocessor_config.json values
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "size": {"shortest_edge": 224},
}


def preprocessor_config(clip: ClipVisionConfig) -> dict:
    """The CLIP folder's preprocessor_config.json: the official values, or (``center_crop``
    off) the same processor squashing the whole frame to image_size x image_size."""
    if clip.center_crop:
        return dict(PREPROCESSOR)
    side = {"height": clip.image_size, "width": clip.image_size}
    return {**PREPROCESSOR, "do_center_crop": False, "crop_size": side, "size": side}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--out", required=True, help="folder to write checkpoint/ and clip/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="decoder layers (default: the size's)")
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers: expected at least 1, got {args.layers}")
    ckpt, clip = write_random_checkpoint(args.out, args.size, args.seed, args.layers)
    sys.stdout.write(f"wrote random {args.size} checkpoint: {ckpt} and CLIP folder: {clip}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
