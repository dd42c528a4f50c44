"""The Qwen2 decoder with an explicit KV cache: the reference for ``embed_tokens.onnx`` and
``decoder.onnx`` (DESIGN.md, stages table; facts file section 2.4).

Owns the decoder math only: token embedding, RMSNorm, rotary position embedding, grouped-query
attention over a cache passed in and handed back, the SiLU-gated MLP and tied logits. Attribute
names mirror the checkpoint keys with the ``model.`` prefix stripped, so a stripped checkpoint
loads strictly. Strict loading itself lives elsewhere.

Written to trace cleanly with the legacy ONNX exporter (dynamic batch, new length S and past
length P): no Python branching on tensor values, masks built from ``arange`` comparisons, no
in-place ops on inputs. Attention is plain matmul + softmax rather than
``scaled_dot_product_attention``: it traces to MatMul/Softmax the same way in every torch version,
it matches transformers' eager attention step for step, and a row with every key masked (a
left-padding query) stays finite instead of turning into NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models.config import QwenConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    """x / rms(x) computed in fp32, cast back to the input dtype, then scaled (Qwen2's order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * theta^(-2i/head_dim), in fp32, as (B, 1, S, head_dim) in ``dtype``.

    The inverse frequencies are built here in fp32 rather than kept as a buffer, so casting the
    module to fp16/bf16 cannot round them (an exporter folds them into a constant).
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (theta ** (exponent / head_dim))  # (hd/2,)
    freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]  # (B, S, hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, S, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + rotate_half(x) * sin, for x (B, heads, S, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_bias(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Additive fp32 mask (B, 1, 1, S, P+S): 0 where query i (absolute P+i) may see key j.

    Key j is visible iff j <= P + i and attention_mask[b, j] == 1; hidden keys get fp32's
    ``finfo.min`` rather than -inf, so a fully masked row (a padding query) stays finite.
    """
    total = attention_mask.shape[1]  # P + S
    key_pos = torch.arange(total, device=attention_mask.device)  # (T,)
    query_pos = key_pos[total - seq_len :]  # (S,) absolute positions P..P+S-1
    causal = key_pos[None, :] <= query_pos[:, None]  # (S, T)
    allowed = causal[None, :, :] & (attention_mask[:, None, :] == 1)  # (B, S, T)
    zero = torch.zeros((), dtype=torch.float32, device=attention_mask.device)
    neg = torch.full((), torch.finfo(torch.float32).min, device=attention_mask.device)
    return torch.where(allowed, zero, neg)[:, None, None]  # (B, 1, 1, S, T)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v for q (B, nh, S, hd) and k, v (B, kvh, T, hd) with
    nh a multiple of kvh; bias from ``attention_bias``. Returns (B, S, nh*hd).

    GQA: query head h uses kv head h // groups. The queries of one kv head are stacked into one
    (groups*S, hd) matrix, so each kv head is one plain matmul that reads its keys once: the same
    as repeating k/v, without copying the cache or broadcasting.
    """
    batch, num_heads, seq_len, head_dim = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    groups = num_heads // kv_heads
    q = q.reshape(batch, kv_heads, groups * seq_len, head_dim)
    scores = q @ k.transpose(-1, -2) * head_dim**-0.5  # (B, kvh, g*S, T)
    scores = scores.reshape(batch, kv_heads, groups, seq_len, total)
    probs = F.softmax(scores.float() + bias, dim=-1).to(q.dtype)  # fp32 mask and softmax
    probs = probs.reshape(batch, kv_heads, groups * seq_len, total)
    out = probs @ v  # (B, kvh, g*S, hd)
    out = out.reshape(batch, num_heads, seq_len, head_dim).transpose(1, 2)
    return out.reshape(batch, seq_len, num_heads * head_dim)  # (B, S, nh*hd)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; concatenates the new keys/values to the past."""

    def __init__(self, cfg: QwenConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, seq_len = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, nh|kvh, S, hd)
        k = torch.cat((past[0], k), dim=2)  # (B, kvh, P+S, hd)
        v = torch.cat((past[1], v), dim=2)
        return self.o_proj(grouped_attention(q, k, v, bias)), (k, v)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: QwenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: QwenConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, bias, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class Qwen2Decoder(nn.Module):
    """Embedding, decoder layers, final norm and logits; the KV cache is an explicit input/output.

    ``forward(inputs_embeds (B,S,H), attention_mask (B,P+S), position_ids (B,S), past)`` returns
    ``logits (B,S,V)`` and ``presents``, one (key, value) pair per layer of shape
    (B, kv_heads, P+S, head_dim). Keys are stored after RoPE, as transformers stores them.
    """

    def __init__(self, cfg: QwenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) -> inputs_embeds (B, S, H)."""
        return self.embed_tokens(input_ids)

    def empty_cache(self, batch: int, dtype: torch.dtype = torch.float32) -> KVCache:
        """A past of length 0 for every layer: (B, kv_heads, 0, head_dim) keys and values."""
        shape = (batch, self.cfg.num_key_value_heads, 0, self.cfg.head_dim)
        device = self.embed_tokens.weight.device
        return [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in self.layers
        ]

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: KVCache,
        logits_to_keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """``logits_to_keep`` (0-d int64, optional): logits of the last k positions only, all
        when k is 0 — a prefill needs just the last one, which saves the vocabulary projection."""
        x = inputs_embeds  # (B, S, H)
        cos, sin = rotary_cos_sin(
            position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype
        )  # (B, 1, S, hd)
        bias = attention_bias(attention_mask, x.shape[1])  # (B, 1, 1, S, P+S)
        presents: KVCache = []
        for layer, past in zip(self.layers, past_key_values, strict=True):
            x, present = layer(x, cos, sin, bias, past)
            presents.append(present)
        return self.logits(x, logits_to_keep), presents

    def logits(self, x: torch.Tensor, logits_to_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and vocabulary projection of the last layer's (B, S, H) output: (B, S, V),
        or (B, k, V) for the last k positions when ``logits_to_keep`` is k > 0."""
        if logits_to_keep is not None:
            seq_len = torch.tensor(x.shape[1], dtype=torch.int64, device=x.device)
            start = torch.where(logits_to_keep > 0, seq_len - logits_to_keep, 0)
            x = x[:, start:]  # (B, k or S, H)
        x = self.norm(x)
        if self.cfg.tie_word_embeddings:
            return x @ self.embed_tokens.weight.t()  # (B, S, V)
        return self.lm_head(x)
