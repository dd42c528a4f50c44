"""Strict loading: round trips, and clear failures naming file, key, expected and got."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvgpt.models import weights as W
from mvgpt.models.checkpoint import check_folders, load_checkpoint
from mvgpt.models.config import MobileVideoGPTConfig
from mvgpt.runtime.errors import CheckpointError


def _copy(src_dirs, tmp_path):
    ckpt, clip = src_dirs
    dst_ckpt, dst_clip = tmp_path / "checkpoint", tmp_path / "clip"
    shutil.copytree(ckpt, dst_ckpt)
    shutil.copytree(clip, dst_clip)
    return dst_ckpt, dst_clip


def _rewrite(path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_tiny_round_trip_loads_every_part(tiny_checkpoint):
    ckpt = load_checkpoint(*tiny_checkpoint)
    expected = W.checkpoint_shapes(ckpt.config)
    loaded = (
        len(ckpt.qwen)
        + len(ckpt.video_mamba)
        + len(ckpt.video_projector)
        + len(ckpt.image_projector)
    )
    assert loaded == len(expected)
    assert set(ckpt.clip) == set(W.clip_shapes(ckpt.config.clip))
    assert "clip_decoder.0.head.weight" not in ckpt.video_mamba  # ignored on purpose
    assert all(t.dtype == torch.float32 for t in ckpt.qwen.values())


def test_real_size_round_trip_has_official_counts(checkpoint_05b):
    config = check_folders(*checkpoint_05b)
    assert config == MobileVideoGPTConfig()
    ckpt = load_checkpoint(*checkpoint_05b)
    counts = {
        "qwen": sum(t.numel() for t in ckpt.qwen.values()),
        "video_mamba": sum(t.numel() for t in ckpt.video_mamba.values()),
        "video_projector": sum(t.numel() for t in ckpt.video_projector.values()),
        "image_projector": sum(t.numel() for t in ckpt.image_projector.values()),
    }
    print(counts)
    # the facts file's parameter counts for Qwen2.5-0.5B, VideoMamba-M and both ETPs
    assert counts == {
        "qwen": 494_032_768,
        "video_mamba": 73_645_056,
        "video_projector": 1_329_664,
        "image_projector": 1_501_696,
    }
    index = json.loads((checkpoint_05b[0] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2  # the sharded layout was exercised


def test_renamed_key_is_named(tiny_checkpoint, tmp_path):
    ckpt, clip = _copy(tiny_checkpoint, tmp_path)
    old = "model.layers.1.mlp.up_proj.weight"
    _rewrite(
        ckpt / "model.safetensors",
        lambda t: t.__setitem__("model.layers.1.mlp.upproj.weight", t.pop(old)),
    )
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, clip)
    message = str(err.value)
    print(message)
    assert f"missing key {old}" in message
    assert "unexpected key(s): model.layers.1.mlp.upproj.weight" in message
    assert "\n" not in message


def test_wrong_shape_names_file_key_expected_and_got(tiny_checkpoint, tmp_path):
    ckpt, clip = _copy(tiny_checkpoint, tmp_path)
    key = W.VIDEO_MAMBA_PREFIX + "layers.0.mixer.A_b_log"
    _rewrite(ckpt / "model.safetensors", lambda t: t.__setitem__(key, torch.zeros(3, 3)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, clip)
    message = str(err.value)
    print(message)
    assert "model.safetensors" in message and key in message
    assert "[3, 3]" in message and "[64, 4]" in message


def test_clip_folder_problems(tiny_checkpoint, tmp_path):
    ckpt, clip = _copy(tiny_checkpoint, tmp_path)
    key = "vision_model.encoder.layers.2.mlp.fc1.weight"
    _rewrite(clip / "model.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key {key}"):
        load_checkpoint(ckpt, clip)
    # a checkpoint folder given where the CLIP folder belongs
    with pytest.raises(CheckpointError, match="vision_config"):
        load_checkpoint(ckpt, ckpt)


def test_missing_and_corrupt_files(tiny_checkpoint, tmp_path):
    ckpt, clip = _copy(tiny_checkpoint, tmp_path)
    with pytest.raises(CheckpointError, match="folder not found"):
        load_checkpoint(tmp_path / "nope", clip)
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(ckpt, clip)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(ckpt, clip)
    (ckpt / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt, clip)


def test_sharded_index_naming_a_missing_shard(checkpoint_05b, tmp_path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors.index.json"):
        shutil.copy(checkpoint_05b[0] / name, ckpt / name)
    with pytest.raises(CheckpointError, match="shard files that are missing"):
        load_checkpoint(ckpt, checkpoint_05b[1])
