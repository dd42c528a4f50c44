"""One frozen config dataclass per model part, read from the checkpoint's config.json.

Field names are the official ones (Qwen2 ``config.json``, CLIP ``vision_config``). VideoMamba-M's
sizes are hard-coded in the official code, not stored in config.json; a checkpoint may carry an
``mvgpt_video_mamba`` object (our random tiny checkpoints do) and otherwise the VideoMamba-M
values apply.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mvgpt.runtime.errors import CheckpointError

VIDEO_MAMBA_CONFIG_KEY = "mvgpt_video_mamba"
PROJECTOR_CONFIG_KEY = "mvgpt_projector"  # {image_grid, video_grid}: absent in official configs


def _pick(cls, data: dict[str, Any], **overrides):
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


@dataclass(frozen=True)
class QwenConfig:
    """The Qwen2 decoder (Qwen2.5-0.5B-Instruct values by default)."""

    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    vocab_size: int = 151936
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ClipVisionConfig:
    """The CLIP ViT vision tower (openai/clip-vit-base-patch16 by default)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    select_layer: int = -2  # mm_vision_select_layer: output of the 11th of 12 layers
    # preprocessor_config.json's do_center_crop: the official processor resizes the shortest
    # side and crops the centre; off (with a square size), the whole frame is squashed
    center_crop: bool = True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class VideoMambaConfig:
    """VideoMamba-M (videomamba_m16_25M_f8_res224) with bidirectional Mamba mixers."""

    embed_dim: int = 576
    depth: int = 32
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 36  # "auto" = ceil(embed_dim / 16)
    num_frames: int = 8
    img_size: int = 224
    patch_size: int = 16
    rms_norm_eps: float = 1e-5
    clip_decoder_dim: int = 512  # unused head kept in the checkpoint

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


@dataclass(frozen=True)
class SelectionConfig:
    """Frame sampling and attention-based selection (constants.py and qwen.py defaults)."""

    num_frames: int = 16  # NUM_FRAMES: sampled from the video, all go through CLIP
    chunk_size: int = 8  # CHUNK_SIZE
    num_select_k_frames_in_chunk: int = 4

    @property
    def num_chunks(self) -> int:
        return self.num_frames // self.chunk_size

    @property
    def num_selected(self) -> int:
        return self.num_chunks * self.num_select_k_frames_in_chunk


@dataclass(frozen=True)
class ProjectorConfig:
    """The two ETP projectors: video (VideoMamba features) and image (CLIP features)."""

    video_in: int = 576
    image_in: int = 768
    hidden_size: int = 896
    video_grid: int = 7  # per chunk: 4 frames x 7x7 read as 14x14, pooled to 7x7
    image_grid: int = 12  # per frame: 14x14 pooled to 12x12


@dataclass(frozen=True)
class MobileVideoGPTConfig:
    """Everything the reference model needs, gathered from both folders."""

    qwen: QwenConfig = field(default_factory=QwenConfig)
    clip: ClipVisionConfig = field(default_factory=ClipVisionConfig)
    video_mamba: VideoMambaConfig = field(default_factory=VideoMambaConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    @property
    def num_image_tokens(self) -> int:
        return self.selection.num_frames * self.projector.image_grid**2

    @property
    def num_video_tokens(self) -> int:
        return self.selection.num_chunks * self.projector.video_grid**2

    @property
    def num_visual_tokens(self) -> int:
        return self.num_image_tokens + self.num_video_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, raising CheckpointError naming the file on any problem."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a config.json in this folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def video_mamba_config_from(data: dict[str, Any]) -> VideoMambaConfig:
    extra = data.get(VIDEO_MAMBA_CONFIG_KEY) or {}
    cfg = _pick(VideoMambaConfig, extra)
    if "dt_rank" not in extra:
        cfg = VideoMambaConfig(**{**asdict(cfg), "dt_rank": math.ceil(cfg.embed_dim / 16)})
    return cfg


def clip_center_crop(clip_dir: Path, image_size: int) -> bool:
    """preprocessor_config.json's ``do_center_crop`` (True when the file is absent, as in the
    official openai/clip-vit-base-patch16 folder). Without the crop, ``size`` must be the square
    ``image_size`` x ``image_size`` that the frames are squashed to."""
    path = clip_dir / "preprocessor_config.json"
    if not path.is_file():
        return True
    data = read_json(path)
    if bool(data.get("do_center_crop", True)):
        return True
    size = data.get("size")
    if size != {"height": image_size, "width": image_size}:
        raise CheckpointError(
            f"{path}: expected a size of {{'height': {image_size}, 'width': {image_size}}} with "
            f"do_center_crop false, got {size!r}; fix: give the square size the tower was "
            "trained on, or turn the centre crop back on"
        )
    return False


def load_config(checkpoint_dir: Path, clip_dir: Path) -> MobileVideoGPTConfig:
    """Build the full config from the checkpoint's and the CLIP folder's config.json."""
    data = read_json(Path(checkpoint_dir) / "config.json")
    clip_data = read_json(Path(clip_dir) / "config.json")
    vision = clip_data.get("vision_config")
    if vision is None and clip_data.get("model_type") == "clip_vision_model":
        vision = clip_data  # a CLIPVisionModel folder works too
    if not isinstance(vision, dict) or "hidden_size" not in vision:
        raise CheckpointError(
            f"{Path(clip_dir) / 'config.json'}: no vision_config with hidden_size "
            "(expected the config of a CLIPModel such as openai/clip-vit-base-patch16)"
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in data]
    if missing:
        raise CheckpointError(
            f"{Path(checkpoint_dir) / 'config.json'}: missing Qwen2 fields {missing}"
        )
    qwen = _pick(QwenConfig, data)
    clip = _pick(
        ClipVisionConfig,
        vision,
        select_layer=int(data.get("mm_vision_select_layer", -2)),
        center_crop=clip_center_crop(Path(clip_dir), int(vision.get("image_size", 224))),
    )
    video_mamba = video_mamba_config_from(data)
    grids = data.get(PROJECTOR_CONFIG_KEY) or {}
    projector = _pick(
        ProjectorConfig,
        {k: int(v) for k, v in grids.items() if k in ("image_grid", "video_grid")},
        video_in=video_mamba.embed_dim,
        image_in=clip.hidden_size,
        hidden_size=qwen.hidden_size,
    )
    return MobileVideoGPTConfig(qwen=qwen, clip=clip, video_mamba=video_mamba, projector=projector)
