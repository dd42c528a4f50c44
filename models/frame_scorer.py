"""Attention-based frame selection: the parameter-free scorer over CLIP patch features (facts §1.5).

Per chunk of ``frames_per_chunk`` frames, the tokens X (N = T*P, D) attend to themselves:
A = softmax(X X^T / sqrt(D)) over keys, and frame t scores the attention its tokens receive,
s_t = sum_i sum_{j in frame t} A_ij. The top-k frames per chunk are kept in time order.

Computed in fp32. The official code runs this in fp16, where scores near 196 are only resolved to
0.125, so near-ties may pick different frames than fp32 does (and torch.topk does not specify how
exact ties are broken).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def frame_scores(features: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """Attention received per frame: (num_chunks, T*P, D) -> (num_chunks, T), fp32."""
    x = features.float()
    logits = torch.matmul(x, x.transpose(1, 2)) / math.sqrt(x.shape[-1])  # (nc, N, N)
    attn = torch.softmax(logits, dim=-1)  # rows (queries) sum to 1
    received = attn.sum(dim=1)  # (nc, N): column sums over queries
    return received.reshape(received.shape[0], frames_per_chunk, -1).sum(-1)  # (nc, T)


def select_frames(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k largest per chunk, kept in time order, as global frame indices (num_chunks*k,)."""
    num_chunks, frames_per_chunk = scores.shape
    top = torch.topk(scores, k, dim=-1, largest=True).indices.sort(dim=-1).values  # (nc, k)
    offsets = torch.arange(num_chunks, device=scores.device).unsqueeze(1) * frames_per_chunk
    return (top + offsets).reshape(-1)  # (nc*k,)


class FrameScorer(nn.Module):
    """``frame_scores`` as a module for export: (num_chunks, T*P, D) -> scores (nc, T)."""

    def __init__(self, frames_per_chunk: int):
        super().__init__()
        self.frames_per_chunk = frames_per_chunk

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return frame_scores(features, self.frames_per_chunk)
