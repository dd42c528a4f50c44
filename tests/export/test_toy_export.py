"""The toy model's checkpoint layout through the exporter and the runtime (issue 16): its CLIP
processor squashes the whole frame (do_center_crop off), its projectors pool to one token per
frame and per chunk, and the package answers through Pipeline as the PyTorch model does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvgpt.exporter.package import export_package
from mvgpt.models import toy_train as T
from mvgpt.models import toy_videos as tv
from mvgpt.models.checkpoint import load_checkpoint
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.models.toy_checkpoint import write_checkpoint
from mvgpt.models.toy_tokenizer import build_tokenizer
from mvgpt.runtime import Pipeline
from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import CheckpointError
from mvgpt.runtime.preprocess import preprocess_clip, preprocess_video_mamba
from mvgpt.runtime.prompt import prompt_ids
from mvgpt.runtime.sampling import GenerationConfig
from mvgpt.runtime.video import read_frames


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """An untrained toy checkpoint (random weights at the toy size) and its fp32 package."""
    out = tmp_path_factory.mktemp("toy")
    tokenizer = build_tokenizer()
    model = T.new_model(tokenizer.get_vocab_size(), 0)
    torch.manual_seed(1)
    with torch.no_grad():  # the decoder's GPT-style start is nearly constant: make it vary
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.2)
    ckpt, clip = write_checkpoint(model.eval(), tokenizer, out, {"note": "untrained"})
    export_package(ckpt, clip, out / "pkg")
    return ckpt, clip, out / "pkg"


def test_checkpoint_says_squash_and_one_token_pools(toy):
    ckpt, clip, package = toy
    processor = json.loads((clip / "preprocessor_config.json").read_text())
    assert processor["do_center_crop"] is False
    assert processor["size"] == {"height": 224, "width": 224}
    cfg = load_checkpoint(ckpt, clip).config
    assert cfg.clip.center_crop is False
    assert (cfg.projector.image_grid, cfg.projector.video_grid) == (1, 1)
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest[M.K_PREPROCESS]["clip"][M.P_RESIZE] == M.RESIZE_CLIP_SQUASH
    assert manifest[M.K_VISUAL]["num_visual_tokens"] == 16 + 2


def test_square_size_is_required_without_the_crop(toy, tmp_path):
    ckpt, clip, _ = toy
    bad = tmp_path / "clip"
    bad.mkdir()
    for item in clip.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    processor = json.loads((clip / "preprocessor_config.json").read_text())
    processor["size"] = {"shortest_edge": 224}
    (bad / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, bad)
    message = str(err.value)
    print(message)
    assert "\n" not in message and "do_center_crop false" in message


def test_package_answers_as_the_pytorch_model(toy, tmp_path):
    ckpt, clip, package = toy
    scene = tv.make_scene(tv.split_seeds("heldout", 1)[0])
    video = tv.write_mp4(scene, tmp_path / "scene.mp4")
    pipeline = Pipeline.load(package)
    frames, _ = read_frames(video, 16)
    clip_pixels, mamba_pixels = pipeline.preprocess(frames)
    np.testing.assert_array_equal(clip_pixels, preprocess_clip(frames, center_crop=False))
    model = MobileVideoGPT.from_checkpoint(load_checkpoint(ckpt, clip))
    with torch.no_grad():
        visual, _ = model.encode_video(
            torch.from_numpy(clip_pixels), torch.from_numpy(preprocess_video_mamba(frames))
        )
        encoding = pipeline.encode(video)
        question = "How many objects are there?"
        ids = prompt_ids(pipeline.tokenizer, question)
        ours = pipeline.answer(encoding, question, max_new_tokens=6).token_ids
        generation = json.loads((ckpt / "generation_config.json").read_text())
        gen = GenerationConfig.official(generation, max_new_tokens=6)
        ref = model.generate(model.prompt_embeds(ids, visual), gen)
    diff = np.abs(encoding.visual - visual.numpy()).max()
    print(f"visual tokens: max |package - PyTorch| {diff:.2e}; tokens {ours} vs {ref}")
    assert encoding.visual.shape == (18, 128) and diff < 1e-4
    assert list(ours) == list(ref)
