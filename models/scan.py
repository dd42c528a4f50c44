"""The selective scan (S6) reference in plain torch: the spec the C++ kernel and the portable
ONNX graph are checked against (facts file, section 4.1).

Signature and shapes follow mamba's ``selective_scan_ref``: u, delta, z (B, D, L); A (D, N);
B, C (B, N, L) or grouped (B, G, N, L); D, delta_bias (D,). The state is fp32; the output is
cast back to u's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """y_t = C_t . h_t, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; then + D u, * silu(z)."""
    dtype_in = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    B, C = B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    if B.dim() == 4:  # (B, G, N, L): each group serves dim // G channels
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (B, D, N, L)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    else:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (B, 1, N, L)
    delta_a = torch.exp(delta.unsqueeze(2) * A.unsqueeze(-1))  # (B, D, N, L)
    delta_b_u = delta.unsqueeze(2) * B * u.unsqueeze(2)  # (B, D, N, L)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        state = delta_a[..., t] * state + delta_b_u[..., t]
        ys.append((state * C[..., t]).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1)  # (B, D, L)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


class SelectiveScan(nn.Module):
    """Module form of the scan, so an exporter can swap the implementation per instance."""

    def __init__(self, delta_softplus: bool = True):
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, self.delta_softplus)
