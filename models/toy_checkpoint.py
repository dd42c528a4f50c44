"""A trained ``MobileVideoGPT`` -> checkpoint folders in the official layout (issue 16).

Writes OUT/checkpoint/ (config.json, model.safetensors, tokenizer.json, generation_config.json)
and OUT/clip/ (a CLIPModel folder: config.json with vision_config, model.safetensors,
preprocessor_config.json), the two folders ``mvgpt-export --checkpoint OUT/checkpoint --clip
OUT/clip`` reads. Key names come from ``models/weights.py``, the table the strict loader checks;
the config keys are the random writer's (``random_checkpoint``) with the toy model's own values.
Weights are stored in fp32, as trained. ``write_checkpoint`` ends by loading both folders back
strictly and comparing every tensor with the model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from mvgpt.models import weights as W
from mvgpt.models.checkpoint import load_checkpoint
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.models.random_checkpoint import (
    _checkpoint_config,
    _clip_config,
    preprocessor_config,
)
from mvgpt.models.toy_tokenizer import TOKENIZER_FILE, generation_config
from mvgpt.runtime.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"


def official_tensors(model: MobileVideoGPT) -> tuple[dict, dict]:
    """(checkpoint tensors, CLIP folder tensors) under their official key names."""
    parts = {
        W.QWEN_PREFIX: model.decoder,
        W.VIDEO_MAMBA_PREFIX: model.video_mamba,
        W.VIDEO_PROJECTOR_PREFIX: model.video_projector,
        W.IMAGE_PROJECTOR_PREFIX: model.image_projector,
    }
    checkpoint = {
        prefix + key: value.detach().float().contiguous().clone()
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }
    clip = {
        W.CLIP_PREFIX + key: value.detach().float().contiguous().clone()
        for key, value in model.clip.state_dict().items()
    }
    return checkpoint, clip


def checkpoint_config(model: MobileVideoGPT, generation: dict, about: dict) -> dict:
    """config.json: the official keys, this model's sizes and token ids, ``about`` under
    ``mvgpt_toy_model``."""
    cfg = model.cfg
    data = _checkpoint_config(cfg, "tiny")  # writes the mvgpt_video_mamba object for this size
    data.pop("mvgpt_random_weights")
    data.update(
        {
            "torch_dtype": "float32",
            "bos_token_id": generation["bos_token_id"],
            "eos_token_id": generation["eos_token_id"][0],
            "mm_vision_select_layer": cfg.clip.select_layer,
            "mm_hidden_size": cfg.clip.hidden_size,
            "image_mm_hidden_size": cfg.clip.hidden_size,
            "mvgpt_toy_model": about,
        }
    )
    return data


def write_checkpoint(
    model: MobileVideoGPT, tokenizer: Tokenizer, out: str | Path, about: dict
) -> tuple[Path, Path]:
    """Write OUT/checkpoint and OUT/clip; return (checkpoint_dir, clip_dir)."""
    out = Path(out)
    ckpt_dir, clip_dir = out / "checkpoint", out / "clip"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, clip = official_tensors(model)
    meta = {"format": "pt"}
    save_file(checkpoint, str(ckpt_dir / WEIGHTS_FILE), metadata=meta)
    generation = generation_config(tokenizer)
    config = checkpoint_config(model, generation, about)
    (ckpt_dir / "config.json").write_text(json.dumps(config, indent=2))
    (ckpt_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save(str(ckpt_dir / TOKENIZER_FILE))
    save_file(clip, str(clip_dir / WEIGHTS_FILE), metadata=meta)
    clip_config = _clip_config(model.cfg.clip)
    clip_config.pop("mvgpt_random_weights")
    (clip_dir / "config.json").write_text(json.dumps(clip_config, indent=2))
    (clip_dir / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(model.cfg.clip), indent=2)
    )
    verify_written(model, ckpt_dir, clip_dir)
    return ckpt_dir, clip_dir


def verify_written(model: MobileVideoGPT, ckpt_dir: Path, clip_dir: Path) -> None:
    """Load the folders strictly and raise unless every tensor equals the model's."""
    loaded = MobileVideoGPT.from_checkpoint(load_checkpoint(ckpt_dir, clip_dir))
    if loaded.cfg != model.cfg:
        raise CheckpointError(
            f"{ckpt_dir}: expected the written config to load as the model's, got "
            f"{loaded.cfg} vs {model.cfg}; fix: check checkpoint_config"
        )
    ours = model.state_dict()
    differ = [k for k, v in loaded.state_dict().items() if not torch.equal(v, ours[k])]
    if differ:
        raise CheckpointError(
            f"{ckpt_dir}: expected every tensor to load back unchanged, got {len(differ)} that "
            f"differ ({differ[:3]}); fix: check official_tensors"
        )
