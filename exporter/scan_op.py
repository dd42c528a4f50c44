"""The torch side of ``mvgpt::SelectiveScan``: a torch custom op and its ONNX export.

Owns ``torch.ops.mvgpt.selective_scan`` (eager: ``models.scan.selective_scan_ref``; fake: an
empty tensor shaped like u), the TorchScript-exporter symbolic that emits one
``mvgpt::SelectiveScan`` node (``torch.onnx.export(..., dynamo=False)``), and ``ScanOp``, an
``nn.Module`` with the signature of ``models.scan.SelectiveScan`` that the exporter swaps into the
VideoMamba mixers (``mixer.scan = ScanOp(mixer.scan.delta_softplus)``).
"""

from __future__ import annotations

import torch
from torch import nn

from mvgpt.models.scan import selective_scan_ref
from mvgpt.runtime.errors import ExportError
from mvgpt.runtime.manifest import CUSTOM_OP_DOMAIN, CUSTOM_OP_SCAN, OPSET

TORCH_OP = "mvgpt::selective_scan"


@torch.library.custom_op(TORCH_OP, mutates_args=())
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """y (B, D, L) = the selective scan of ``models.scan.selective_scan_ref``."""
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus).contiguous()


@selective_scan.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u)


def _symbolic(g, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """One ``mvgpt::SelectiveScan`` node; an absent z / delta_bias becomes an empty input."""
    from torch.onnx import symbolic_helper, symbolic_opset9

    softplus = symbolic_helper._maybe_get_const(delta_softplus, "b")
    if not isinstance(softplus, bool | int):
        raise ExportError(
            f"{CUSTOM_OP_SCAN}: delta_softplus must be a Python bool at export time, got "
            f"{softplus!r}; fix: pass a constant (the mixer's config value)"
        )
    inputs = [u, delta, A, B, C, D]
    for opt in (z, delta_bias):
        inputs.append(symbolic_opset9.unused(g) if symbolic_helper._is_none(opt) else opt)
    while len(inputs) > 6 and symbolic_helper._is_none(inputs[-1]):
        inputs.pop()  # trailing absent inputs are simply left out
    y = g.op(f"{CUSTOM_OP_DOMAIN}::{CUSTOM_OP_SCAN}", *inputs, delta_softplus_i=int(bool(softplus)))
    y.setType(u.type())
    return y


_REGISTERED: set[int] = set()


def register_onnx_symbolic(opset: int = OPSET) -> None:
    """Register the TorchScript-exporter symbolic for ``opset`` (idempotent)."""
    if opset in _REGISTERED:
        return
    torch.onnx.register_custom_op_symbolic(TORCH_OP, _symbolic, opset)
    _REGISTERED.add(opset)


class ScanOp(nn.Module):
    """Drop-in for ``models.scan.SelectiveScan`` that calls the custom op (so it exports)."""

    def __init__(self, delta_softplus: bool = True):
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, u, delta, A, B, C, D, z, delta_bias):  # noqa: D102 - as SelectiveScan
        if B.dim() != 3 or C.dim() != 3:
            raise ExportError(
                f"{CUSTOM_OP_SCAN}: B and C must be (batch, state, length), got "
                f"{tuple(B.shape)} and {tuple(C.shape)}; fix: grouped (4-D) B/C are not supported "
                "by the op"
            )
        if D is None:  # the op needs D; zeros keep y unchanged
            D = u.new_zeros(u.shape[1])
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(self.delta_softplus))
