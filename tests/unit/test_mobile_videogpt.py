"""The whole reference model: visual token layout, prompt placement, cached greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from mvgpt.models.checkpoint import load_checkpoint
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.runtime.prompt import IMAGE_TOKEN_INDEX, prompt_ids
from mvgpt.runtime.sampling import GenerationConfig


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    ckpt = load_checkpoint(*tiny_checkpoint)
    tokenizer = Tokenizer.from_file(str(tiny_checkpoint[0] / "tokenizer.json"))
    return MobileVideoGPT.from_checkpoint(ckpt), tokenizer


def test_visual_tokens_are_clip_then_videomamba(loaded):
    model, _ = loaded
    gen = torch.Generator().manual_seed(0)
    clip_pixels = torch.randn(16, 3, 224, 224, generator=gen)
    mamba_pixels = torch.randn(16, 3, 224, 224, generator=gen)
    visual, selected = model.encode_video(clip_pixels, mamba_pixels)
    assert visual.shape == (2402, 64)
    first, second = selected[:4].tolist(), selected[4:].tolist()
    assert first == sorted(first) and all(0 <= i < 8 for i in first)
    assert second == sorted(second) and all(8 <= i < 16 for i in second)
    # the first 2304 rows are the image projector's output on all 16 CLIP frames, in order
    with torch.no_grad():
        image_tokens = model.image_projector(model.clip(clip_pixels))
    diff = (visual[:2304] - image_tokens.reshape(-1, 64)).abs().max().item()
    print("image tokens max |diff|:", diff)
    assert diff == 0.0
    # the last 98 come from VideoMamba on the selected frames only: other frames do not matter
    others = [i for i in range(16) if i not in selected.tolist()]
    changed = mamba_pixels.clone()
    changed[others] = 0.0
    visual2, _ = model.encode_video(clip_pixels, changed)
    assert torch.equal(visual, visual2)


def test_prompt_embeds_put_visual_in_place_of_the_sentinels(loaded):
    model, tokenizer = loaded
    ids = prompt_ids(tokenizer, "What happens?")
    visual = torch.randn(2402, 64)
    embeds = model.prompt_embeds(ids, visual)
    start = int(np.argmax(ids == IMAGE_TOKEN_INDEX))
    assert embeds.shape == (1, len(ids) - 8 + 2402, 64)
    assert torch.equal(embeds[0, start : start + 2402], visual)
    text = model.decoder.embed(torch.as_tensor(ids[None, :start]))[0]
    assert torch.equal(embeds[0, :start], text)


def test_greedy_stream_uses_cache_and_stops_on_eos(loaded):
    model, _ = loaded
    embeds = torch.randn(1, 30, 64, generator=torch.Generator().manual_seed(1))
    tokens = model.generate(embeds, GenerationConfig(max_new_tokens=6, eos_token_ids=(151645,)))
    assert len(tokens) == 6
    # the same tokens from full recomputation without a cache
    seq = embeds
    for expected in tokens:
        length = seq.shape[1]
        logits, _ = model.decoder(
            seq,
            torch.ones(1, length, dtype=torch.int64),
            torch.arange(length)[None],
            model.decoder.empty_cache(1),
        )
        assert int(logits[0, -1].argmax()) == expected
        seq = torch.cat([seq, model.decoder.embed(torch.tensor([[expected]]))], dim=1)
    # stopping: the first occurrence of an eos id ends the answer, the eos itself not included
    penalized = GenerationConfig(max_new_tokens=6, repetition_penalty=5.0)
    varied = model.generate(embeds, penalized)
    assert len(set(varied)) > 1, varied
    cut = next(i for i, t in enumerate(varied) if t != varied[0])
    stop = GenerationConfig(max_new_tokens=6, repetition_penalty=5.0, eos_token_ids=(varied[cut],))
    assert model.generate(embeds, stop) == varied[:cut]
