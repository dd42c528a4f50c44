"""The decoder as it is exported: the reference Qwen2 layers with their attention core replaced by
``mvgpt::GroupQueryAttention``: onnxruntime's ``com.microsoft.GroupQueryAttention`` (GQA) inputs,
outputs and attributes, run by mvgpt's kernel library (kernels/attention.cc: its own kernel for a
one-position step, onnxruntime's GQA kernel for everything else). The package's portable decoder
is the same graph with the node in com.microsoft (kernels/portable.py).

Why GQA: with the conventional ``present = Concat(past, new)`` every decoded token copies the
whole cache (at 0.5b and a full prompt, a large share of an int8 decode step). GQA writes the
new keys/values into ``present`` and, when a caller binds ``past_key`` and ``present_key`` to the
same buffer (IOBinding), writes them in place: the cache is allocated once per answer and never
copied. The buffer may be longer than the positions in use; ``attention_mask`` (all ones, one
column per position in use) says how many are: GQA gets ``seqlens_k = sum(mask) - 1`` and
``total_sequence_length = mask columns``. Rows must therefore be unpadded (or right-padded), and
onnxruntime's CPU kernel takes batch 1 when several new positions follow a past (a chunked
prefill); the runtime runs batch 1.

GQA also applies the rotary embedding (``do_rotary=1``, rotate-half as Qwen2, from cos/sin tables
of every position up to max_position_embeddings, built like the reference's): position i of a run
is ``past positions + i``, which is what the reference's position_ids are for unpadded rows, so the
graph takes no position_ids. Keys enter the cache after rotation, as transformers stores them.
One node instead of ~20 small RoPE/reshape ops per layer.

Everything around the core (norms, projections, MLP, tied logits) is the reference module's own
code and weights, with q/k/v and gate/up each concatenated into one MatMul (the same products;
fewer nodes, and one activation quantization instead of three or two). The torch forward of the
core is the reference math (RoPE included), so tracing sees real shapes; the exported node is GQA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models.qwen2 import (
    Attention,
    Qwen2Decoder,
    apply_rotary,
    attention_bias,
    grouped_attention,
    rotary_cos_sin,
)
from mvgpt.runtime.manifest import CUSTOM_OP_ATTENTION, CUSTOM_OP_DOMAIN


def rotary_tables(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA's cos and sin caches, (max_pos, head_dim/2) fp32: the reference's ``rotary_cos_sin``
    at every position, one copy of its duplicated halves."""
    positions = torch.arange(cfg.max_position_embeddings)[None]  # (1, max_pos)
    cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, torch.float32)
    half = cfg.head_dim // 2
    return cos[0, 0, :, :half], sin[0, 0, :, :half]


class _GroupQueryAttention(torch.autograd.Function):
    """qkv (B,S,(nh+2*kvh)*hd) packed before RoPE, past (B,kvh,P,hd), cos/sin tables
    (max_pos, hd/2) -> out (B,S,nh*hd), presents (B,kvh,P+S,hd) with rotated keys."""

    @staticmethod
    def forward(ctx, qkv, past_k, past_v, seqlens_k, total, cos, sin, num_heads, kv_heads):
        batch, seq = qkv.shape[0], qkv.shape[1]
        hd = qkv.shape[2] // (num_heads + 2 * kv_heads)
        q, k, v = qkv.split([num_heads * hd, kv_heads * hd, kv_heads * hd], -1)
        start = past_k.shape[2]  # tracing/validation runs pass the exact past
        cos = torch.cat((cos, cos), -1)[start : start + seq]  # (S, hd), rotate-half layout
        sin = torch.cat((sin, sin), -1)[start : start + seq]
        q = apply_rotary(q.reshape(batch, seq, num_heads, hd).transpose(1, 2), cos, sin)
        k = apply_rotary(k.reshape(batch, seq, kv_heads, hd).transpose(1, 2), cos, sin)
        v = v.reshape(batch, seq, kv_heads, hd).transpose(1, 2)
        keys, values = torch.cat((past_k, k), 2), torch.cat((past_v, v), 2)  # (B,kvh,T,hd)
        mask = torch.ones(batch, keys.shape[2], dtype=torch.int64)  # unpadded rows
        out = grouped_attention(q, keys, values, attention_bias(mask, seq))
        return out, keys, values

    @staticmethod
    def symbolic(g, qkv, past_k, past_v, seqlens_k, total, cos, sin, num_heads, kv_heads):
        hd = int(cos.type().sizes()[1]) * 2
        absent = g.op("prim::Constant")  # an empty input name: q, k and v come packed
        absent.setType(torch._C.OptionalType.ofTensor())
        out, present_k, present_v = g.op(
            f"{CUSTOM_OP_DOMAIN}::{CUSTOM_OP_ATTENTION}",
            qkv,
            absent,
            absent,
            past_k,
            past_v,
            seqlens_k,
            total,
            cos,
            sin,
            num_heads_i=num_heads,
            kv_num_heads_i=kv_heads,
            scale_f=hd**-0.5,
            do_rotary_i=1,
            rotary_interleaved_i=0,
            outputs=3,
        )
        # batch and lengths are dynamic; heads and widths are known
        out.setType(qkv.type().with_sizes([None, None, num_heads * hd]))
        present_k.setType(past_k.type().with_sizes([None, kv_heads, None, hd]))
        present_v.setType(past_v.type().with_sizes([None, kv_heads, None, hd]))
        return out, present_k, present_v


class GqaDecoder(nn.Module):
    """``Qwen2Decoder`` with GQA attention (see the module docstring): forward(inputs_embeds,
    attention_mask, past_key_values, keep) -> (logits, presents)."""

    def __init__(self, decoder: Qwen2Decoder) -> None:
        super().__init__()
        self.decoder = decoder
        cos, sin = rotary_tables(decoder.cfg)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def _attention(self, attn: Attention, x, past, seqlens_k, total):
        # one MatMul for q, k and v: the input is read (and, quantized, quantized) once, and the
        # attention op takes the product packed
        weight = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
        bias = torch.cat((attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias))
        out, present_k, present_v = _GroupQueryAttention.apply(
            F.linear(x, weight, bias),
            past[0],
            past[1],
            seqlens_k,
            total,
            self.rotary_cos,
            self.rotary_sin,
            attn.num_heads,
            attn.num_kv_heads,
        )
        return attn.o_proj(out), (present_k, present_v)

    @staticmethod
    def _mlp(mlp, x):
        """down(silu(gate(x)) * up(x)) with gate and up as one MatMul (split at a constant width:
        ``chunk`` would trace to Shape/Gather/Div/Mul/Slice nodes run at every step)."""
        width = mlp.gate_proj.out_features
        gate, up = F.linear(x, torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight))).split(
            [width, width], -1
        )
        return mlp.down_proj(F.silu(gate) * up)

    def forward(self, inputs_embeds, attention_mask, past_key_values, keep):
        dec = self.decoder
        x = inputs_embeds
        seqlens_k = (attention_mask.sum(-1) - 1).to(torch.int32)  # (B,) last position in use
        total = torch.ones_like(attention_mask[0]).sum().to(torch.int32)  # mask columns, 0-d
        presents = []
        for layer, past in zip(dec.layers, past_key_values, strict=True):
            h, present = self._attention(
                layer.self_attn, layer.input_layernorm(x), past, seqlens_k, total
            )
            x = x + h
            x = x + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
            presents.append(present)
        return dec.logits(x, keep), presents
