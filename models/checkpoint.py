"""Strict loading of the official checkpoint folder and the CLIP folder.

Checkpoint folder: config.json, model.safetensors or model-0000x-of-0000y.safetensors with
model.safetensors.index.json, tokenizer.json, generation_config.json. CLIP folder: the layout of
openai/clip-vit-base-patch16 (a whole CLIPModel: only its vision part is taken).

Every expected key must be present with the right shape (models/weights.py); unexpected keys are
named; the known-unused ones (VideoMamba's clip_decoder, CLIP's text tower) are ignored on purpose.
Errors name the file, the key, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mvgpt.models import weights as W
from mvgpt.models.config import MobileVideoGPTConfig, load_config, read_json
from mvgpt.runtime.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
REQUIRED_FILES = ("config.json", "tokenizer.json")


@dataclass
class Checkpoint:
    """A verified checkpoint: the config, the weights per part (prefixes stripped), the folders."""

    config: MobileVideoGPTConfig
    qwen: dict[str, torch.Tensor]
    video_mamba: dict[str, torch.Tensor]
    video_projector: dict[str, torch.Tensor]
    image_projector: dict[str, torch.Tensor]
    clip: dict[str, torch.Tensor]
    checkpoint_dir: Path
    clip_dir: Path

    @property
    def generation_config(self) -> dict:
        path = self.checkpoint_dir / "generation_config.json"
        return read_json(path) if path.is_file() else {}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the shards named by the index, or the single file."""
    index = folder / INDEX_FILE
    if index.is_file():
        data = read_json(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map' object (expected key -> shard file)")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard files that are missing: {missing}")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(
        f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE} (expected safetensors weights; "
        "export .bin checkpoints to safetensors first)"
    )


def read_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Key -> (shape, file) without reading tensor data; a corrupt file raises CheckpointError."""
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key in found:
                        raise CheckpointError(f"{path}: key {key} also in {found[key][1].name}")
                    found[key] = (tuple(f.get_slice(key).get_shape()), path)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for damaged headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return found


def verify(
    found: dict[str, tuple[tuple[int, ...], Path]],
    expected: dict[str, tuple[int, ...]],
    ignored_prefixes: tuple[str, ...],
    where: Path,
    fix: str,
) -> None:
    """Raise one CheckpointError listing every missing, mis-shaped and unexpected key."""
    problems = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"missing key {key} (expected shape {list(shape)})")
        elif found[key][0] != shape:
            got, path = found[key]
            problems.append(f"{path.name}: key {key} has shape {list(got)}, expected {list(shape)}")
    unexpected = [k for k in found if k not in expected and not k.startswith(ignored_prefixes)]
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8]) + (" ..." if len(unexpected) > 8 else "")
        problems.append(f"{len(unexpected)} unexpected key(s): {shown}")
    if problems:
        head = "; ".join(problems[:6]) + (
            f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        )
        raise CheckpointError(f"{where}: {head}. {fix}")


def _load_tensors(files: list[Path], keys: list[str]) -> dict[str, torch.Tensor]:
    wanted = set(keys)
    out: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key in wanted:
                        out[key] = f.get_tensor(key).float()
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor data ({e})") from e
    return out


def _strip(tensors: dict[str, torch.Tensor], prefix: str, keys) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: tensors[k] for k in keys if k.startswith(prefix)}


def check_folders(checkpoint_dir: Path, clip_dir: Path) -> MobileVideoGPTConfig:
    """Verify both folders (files, keys, shapes) without reading tensor data; return the config."""
    checkpoint_dir, clip_dir = Path(checkpoint_dir), Path(clip_dir)
    for folder, what in ((checkpoint_dir, "checkpoint"), (clip_dir, "CLIP")):
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: {what} folder not found (expected a directory)")
    for name in REQUIRED_FILES:
        if not (checkpoint_dir / name).is_file():
            raise CheckpointError(
                f"{checkpoint_dir}: missing {name} (expected the official layout)"
            )
    config = load_config(checkpoint_dir, clip_dir)
    verify(
        read_shapes(weight_files(checkpoint_dir)),
        W.checkpoint_shapes(config),
        W.CHECKPOINT_IGNORED_PREFIXES + (("lm_head.",) if config.qwen.tie_word_embeddings else ()),
        checkpoint_dir,
        "Is this a Mobile-VideoGPT checkpoint matching its config.json?",
    )
    verify(
        read_shapes(weight_files(clip_dir)),
        W.clip_checkpoint_shapes(config.clip),
        W.CLIP_IGNORED_PREFIXES,
        clip_dir,
        "Expected a CLIPModel checkpoint such as openai/clip-vit-base-patch16.",
    )
    return config


def load_checkpoint(checkpoint_dir: str | Path, clip_dir: str | Path) -> Checkpoint:
    """Verify both folders strictly, then read every expected tensor as fp32."""
    checkpoint_dir, clip_dir = Path(checkpoint_dir), Path(clip_dir)
    config = check_folders(checkpoint_dir, clip_dir)
    expected = W.checkpoint_shapes(config)
    tensors = _load_tensors(weight_files(checkpoint_dir), list(expected))
    clip_expected = W.clip_checkpoint_shapes(config.clip)
    clip_tensors = _load_tensors(weight_files(clip_dir), list(clip_expected))
    qwen = _strip(tensors, W.QWEN_PREFIX, expected)
    for prefix in (W.VIDEO_MAMBA_PREFIX, W.VIDEO_PROJECTOR_PREFIX, W.IMAGE_PROJECTOR_PREFIX):
        qwen = {k: v for k, v in qwen.items() if not (W.QWEN_PREFIX + k).startswith(prefix)}
    if "lm_head.weight" in tensors:
        qwen["lm_head.weight"] = tensors["lm_head.weight"]
    return Checkpoint(
        config=config,
        qwen=qwen,
        video_mamba=_strip(tensors, W.VIDEO_MAMBA_PREFIX, expected),
        video_projector=_strip(tensors, W.VIDEO_PROJECTOR_PREFIX, expected),
        image_projector=_strip(tensors, W.IMAGE_PROJECTOR_PREFIX, expected),
        clip=_strip(clip_tensors, W.CLIP_PREFIX, clip_expected),
        checkpoint_dir=checkpoint_dir,
        clip_dir=clip_dir,
    )
