"""The decoder as it is exported: the reference Qwen2 layers with their attention core replaced by
onnxruntime's ``com.microsoft.GroupQueryAttention`` (GQA).

Why GQA: with the conventional ``present = Concat(past, new)`` every decoded token copies the
whole cache (0.5b at 2450 positions: 60 MB per token, 22% of an int8 decode step). GQA writes the
new keys/values into ``present`` and, when a caller binds ``past_key`` and ``present_key`` to the
same buffer (IOBinding), writes them in place: the cache is allocated once per answer and never
copied. The buffer may be longer than the positions in use; ``attention_mask`` (all ones, one
column per position in use) says how many are: GQA gets ``seqlens_k = sum(mask) - 1`` and
``total_sequence_length = mask columns``. Rows must therefore be unpadded (or right-padded), and
onnxruntime's CPU kernel takes batch 1 when several new positions follow a past (a chunked
prefill); the runtime runs batch 1.

Everything around the core (norms, projections, RoPE before the cache, as transformers stores
keys, MLP, tied logits) is the reference module's own code and weights. The torch forward of the
core is the reference math, so tracing sees real shapes; the exported node is GQA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models.qwen2 import Attention, Qwen2Decoder, apply_rotary, rotary_cos_sin

GQA_DOMAIN = "com.microsoft"
GQA_OP = "GroupQueryAttention"


class _GroupQueryAttention(torch.autograd.Function):
    """q (B,S,nh*hd), k/v (B,S,kvh*hd), past (B,kvh,P,hd) -> out (B,S,nh*hd), presents."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total, num_heads, kv_heads, hd):
        batch, seq = q.shape[0], q.shape[1]
        scale = hd**-0.5
        q = q.view(batch, seq, num_heads, hd).transpose(1, 2)
        k = k.view(batch, seq, kv_heads, hd).transpose(1, 2)
        v = v.view(batch, seq, kv_heads, hd).transpose(1, 2)
        keys, values = torch.cat((past_k, k), 2), torch.cat((past_v, v), 2)  # (B,kvh,T,hd)
        groups = num_heads // kv_heads
        keys_rep = keys.repeat_interleave(groups, 1)
        values_rep = values.repeat_interleave(groups, 1)
        steps = keys.shape[2]
        causal = torch.ones(seq, steps, dtype=torch.bool).tril(steps - seq)
        scores = (q @ keys_rep.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~causal, float("-inf"))
        out = F.softmax(scores, -1) @ values_rep  # (B, nh, S, hd)
        return out.transpose(1, 2).reshape(batch, seq, num_heads * hd), keys, values

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total, num_heads, kv_heads, hd):
        out, present_k, present_v = g.op(
            f"{GQA_DOMAIN}::{GQA_OP}",
            q,
            k,
            v,
            past_k,
            past_v,
            seqlens_k,
            total,
            num_heads_i=num_heads,
            kv_num_heads_i=kv_heads,
            scale_f=hd**-0.5,
            outputs=3,
        )
        # batch and lengths are dynamic; heads and widths are known
        out.setType(q.type().with_sizes([None, None, num_heads * hd]))
        present_k.setType(past_k.type().with_sizes([None, kv_heads, None, hd]))
        present_v.setType(past_v.type().with_sizes([None, kv_heads, None, hd]))
        return out, present_k, present_v


def _attention(
    attn: Attention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    past: tuple[torch.Tensor, torch.Tensor],
    seqlens_k: torch.Tensor,
    total: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    batch, seq = x.shape[0], x.shape[1]
    nh, kvh, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    # RoPE in the (B, heads, S, hd) layout the reference uses, then back to GQA's (B, S, heads*hd)
    q = attn.q_proj(x).view(batch, seq, nh, hd).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, kvh, hd).transpose(1, 2)
    q = apply_rotary(q, cos, sin).transpose(1, 2).reshape(batch, seq, nh * hd)
    k = apply_rotary(k, cos, sin).transpose(1, 2).reshape(batch, seq, kvh * hd)
    v = attn.v_proj(x)
    out, present_k, present_v = _GroupQueryAttention.apply(
        q, k, v, past[0], past[1], seqlens_k, total, nh, kvh, hd
    )
    return attn.o_proj(out), (present_k, present_v)


class GqaDecoder(nn.Module):
    """``Qwen2Decoder.forward``'s contract with GQA attention (see the module docstring)."""

    def __init__(self, decoder: Qwen2Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values, keep):
        dec = self.decoder
        x = inputs_embeds
        cos, sin = rotary_cos_sin(position_ids, dec.cfg.head_dim, dec.cfg.rope_theta, x.dtype)
        seqlens_k = (attention_mask.sum(-1) - 1).to(torch.int32)  # (B,) last position in use
        total = torch.ones_like(attention_mask[0]).sum().to(torch.int32)  # mask columns, 0-d
        presents = []
        for layer, past in zip(dec.layers, past_key_values, strict=True):
            h, present = _attention(
                layer.self_attn, layer.input_layernorm(x), cos, sin, past, seqlens_k, total
            )
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            presents.append(present)
        return dec.logits(x, keep), presents
