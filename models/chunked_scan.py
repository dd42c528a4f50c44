"""A faster selective scan for training: the math of ``models.scan.selective_scan_ref`` with the
time loop cut into chunks.

The reference steps through all L positions one by one (1569 for an 8-frame clip); autograd then
records about 4 L small operations per direction and layer, which dominates a training step of a
tiny VideoMamba. Here the sequence is padded to ``num_chunks`` x ``chunk`` positions (about
sqrt(L) each) and scanned in two short loops: every chunk at once from a zero state (``chunk``
steps), then the chunks' end states carried from chunk to chunk (``num_chunks`` steps). With the
product of the decays inside each chunk, the full state is h = local + decay_so_far * carried.
Only the decays' products and sums are reordered, so results equal the reference to float
rounding (tests/unit/test_toy_model.py compares them). Training swaps this module into
``mixer.scan``; the checkpoint and the exported graphs never see it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """``selective_scan_ref`` for u, delta, z (B, D, L), A (D, N), B, C (B, N, L), D and
    delta_bias (D,); y (B, D, L) in u's dtype."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float() + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    chunk = max(1, math.isqrt(length))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length  # padded steps come after the last: they change nothing

    def time_major(x: torch.Tensor, value: float) -> torch.Tensor:
        """(B, D, N, L) -> (chunk, num_chunks, B, D, N): step t of every chunk is contiguous."""
        x = F.pad(x, (0, pad), value=value).reshape(*x.shape[:3], num_chunks, chunk)
        return x.permute(4, 3, 0, 1, 2).contiguous()

    decay = time_major(torch.exp(delta.unsqueeze(2) * A.float()[None, :, :, None]), 1.0)
    drive = time_major((delta * u).unsqueeze(2) * B.float().unsqueeze(1), 0.0)
    # unbind, not indexing: each index's backward would fill a full-size zero gradient
    local, product = torch.zeros_like(drive[0]), torch.ones_like(decay[0])
    locals_, products = [], []
    for decay_t, drive_t in zip(decay.unbind(0), drive.unbind(0), strict=True):
        local = decay_t * local + drive_t  # every chunk at once, each from a zero state
        product = product * decay_t
        locals_.append(local)
        products.append(product)
    carried = [torch.zeros_like(local[0])]
    ends = zip(products[-1].unbind(0)[:-1], locals_[-1].unbind(0)[:-1], strict=True)
    for end_decay, end_local in ends:  # the state entering the next chunk
        carried.append(end_decay * carried[-1] + end_local)
    carry = torch.stack(carried)  # (num_chunks, B, D, N)
    h = torch.stack(locals_) + torch.stack(products) * carry  # (chunk, num_chunks, B, D, N)
    h = h.permute(2, 3, 4, 1, 0).reshape(batch, dim, -1, num_chunks * chunk)[..., :length]
    y = (h * C.float().unsqueeze(1)).sum(2) + u * D.float()[:, None]  # (B, D, L)
    return (y * F.silu(z.float())).to(dtype_in)


class ChunkedSelectiveScan(nn.Module):
    """Drop-in for ``models.scan.SelectiveScan`` (same forward signature)."""

    def __init__(self, delta_softplus: bool = True):
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, self.delta_softplus)
