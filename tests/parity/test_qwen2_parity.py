"""Qwen2Decoder (explicit KV cache) against transformers' Qwen2ForCausalLM, tiny random weights.

Prefill, cached decode steps, a left-padded batch, and full pass == prefill + steps. fp32.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from mvgpt.models.config import QwenConfig
from mvgpt.models.qwen2 import Qwen2Decoder

transformers = pytest.importorskip("transformers")

TOL = 1e-4
CFG = QwenConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def hf_twin(ours: Qwen2Decoder):
    """transformers' Qwen2ForCausalLM (eager attention) holding the weights of ``ours``."""
    cfg = ours.cfg
    hf_cfg = transformers.Qwen2Config(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        vocab_size=cfg.vocab_size,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attn_implementation="eager",
    )
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(
        {"model." + k: v for k, v in ours.state_dict().items()}, strict=False
    )
    assert set(missing) <= {"lm_head.weight"}, missing  # tied to model.embed_tokens.weight
    assert not unexpected, unexpected
    assert torch.equal(hf.lm_head.weight, ours.embed_tokens.weight)
    return hf


def build_pair(cfg: QwenConfig = CFG):
    """Our decoder with random weights, and transformers' model holding the same weights."""
    torch.manual_seed(0)
    ours = Qwen2Decoder(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():  # random norms and biases too, not just the default ones/zeros
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
    return ours, hf_twin(ours)


def hf_step(hf, embeds, mask, positions, cache):
    """One transformers forward with its own cache (the kwarg is past_key_values before v5)."""
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{name: cache},
    )
    return out.logits, getattr(out, name)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only (left padding gets 0), as HF generate does."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def run_both(ours, hf, ids: torch.Tensor, mask: torch.Tensor, prefill: int):
    """Prefill ids[:, :prefill], then decode the rest one token at a time in both models.

    Returns the per-step logits of both, as (B, S, V) each.
    """
    positions = positions_from_mask(mask)
    past = ours.empty_cache(ids.shape[0])
    cache = None
    ours_logits, hf_logits = [], []
    steps = [(0, prefill)] + [(t, t + 1) for t in range(prefill, ids.shape[1])]
    with torch.no_grad():
        for start, end in steps:
            embeds = ours.embed(ids[:, start:end])
            a, past = ours(embeds, mask[:, :end], positions[:, start:end], past)
            b, cache = hf_step(hf, embeds, mask[:, :end], positions[:, start:end], cache)
            ours_logits.append(a)
            hf_logits.append(b)
            assert all(k.shape[2] == end and v.shape[2] == end for k, v in past)
    return torch.cat(ours_logits, dim=1), torch.cat(hf_logits, dim=1)


def test_state_dict_keys_match_transformers():
    ours, hf = build_pair()
    theirs = {k.removeprefix("model.") for k in hf.state_dict() if k != "lm_head.weight"}
    assert set(ours.state_dict()) == theirs
    for k, v in ours.state_dict().items():
        assert v.shape == hf.state_dict()["model." + k].shape, k


def test_untied_config_has_lm_head():
    untied = Qwen2Decoder(QwenConfig(**{**CFG.__dict__, "tie_word_embeddings": False}))
    assert "lm_head.weight" in untied.state_dict()
    assert "lm_head.weight" not in Qwen2Decoder(CFG).state_dict()


def test_prefill_and_cached_decode_match_transformers():
    ours, hf = build_pair()
    torch.manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    a, b = run_both(ours, hf, ids, mask, prefill=12)
    prefill_diff = (a[:, :12] - b[:, :12]).abs().max().item()
    decode_diff = (a[:, 12:] - b[:, 12:]).abs().max().item()
    print(f"\nqwen2 prefill max|diff| {prefill_diff:.3e}, decode max|diff| {decode_diff:.3e}")
    assert b.abs().max() > 1.0  # logits are not trivially small
    assert prefill_diff < TOL and decode_diff < TOL


def test_left_padded_batch_matches_transformers():
    ours, hf = build_pair()
    torch.manual_seed(2)
    ids = torch.randint(0, CFG.vocab_size, (2, 15))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 is left-padded by 5
    a, b = run_both(ours, hf, ids, mask, prefill=11)
    assert torch.isfinite(a).all()  # fully masked padding queries must not produce NaN
    real = mask.bool()  # logits at padding positions mean nothing; compare the real tokens
    diff = (a - b).abs()[real].max().item()
    print(f"\nqwen2 left-padded max|diff| {diff:.3e}")
    assert diff < TOL

    # The padding really is ignored: row 1 equals the same tokens run alone without padding.
    alone = ids[1:, 5:]
    c, _ = run_both(ours, hf, alone, torch.ones_like(alone), prefill=6)
    pad_diff = (a[1:, 5:] - c).abs().max().item()
    print(f"qwen2 padded row vs unpadded max|diff| {pad_diff:.3e}")
    assert pad_diff < TOL


def test_full_pass_equals_prefill_plus_steps():
    ours, _ = build_pair()
    torch.manual_seed(3)
    ids = torch.randint(0, CFG.vocab_size, (2, 14))
    mask = torch.ones_like(ids)
    positions = positions_from_mask(mask)
    with torch.no_grad():
        full, full_presents = ours(ours.embed(ids), mask, positions, ours.empty_cache(2))
        past = ours.empty_cache(2)
        pieces = []
        for start, end in [(0, 9), (9, 10), (10, 11), (11, 14)]:  # last piece: 3 tokens at once
            out, past = ours(
                ours.embed(ids[:, start:end]), mask[:, :end], positions[:, start:end], past
            )
            pieces.append(out)
    diff = (full - torch.cat(pieces, dim=1)).abs().max().item()
    cache_diff = max(
        (x - y).abs().max().item()
        for p, q in zip(full_presents, past, strict=True)
        for x, y in zip(p, q, strict=True)
    )
    print(f"\nqwen2 full vs incremental max|diff| logits {diff:.3e}, cache {cache_diff:.3e}")
    assert diff < TOL and cache_diff < TOL


def test_causal_mask_is_applied():
    """Changing a later token must not change earlier logits (and must change its own)."""
    ours, _ = build_pair()
    ids = torch.randint(0, CFG.vocab_size, (1, 10), generator=torch.Generator().manual_seed(4))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % CFG.vocab_size
    mask = torch.ones_like(ids)
    positions = positions_from_mask(mask)
    with torch.no_grad():
        a, _ = ours(ours.embed(ids), mask, positions, ours.empty_cache(1))
        b, _ = ours(ours.embed(changed), mask, positions, ours.empty_cache(1))
    assert torch.equal(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3
