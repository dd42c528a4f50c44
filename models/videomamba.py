"""VideoMamba-M: the video encoder, with bidirectional ("bimamba") Mamba mixers (facts §2.2, §4.2).

Owns the patch/position embedding, the RMSNorm, the bidirectional mixer and the stack of prenorm
blocks. Attribute names mirror the official keys with "model.vision_tower.vision_encoder." stripped;
the unused ``clip_decoder`` head is not built (the loader skips those keys on purpose).

The selective scan is reached only through ``mixer.scan`` (a ``SelectiveScan`` module), called the
same way for both directions, so the exporter can swap it for a module that emits the custom op.
Everything here is traceable by the legacy ONNX exporter: no branching on tensor values, batch may
be dynamic, ``num_frames`` is fixed by the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models.config import VideoMambaConfig
from mvgpt.models.scan import SelectiveScan


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * w, computed in fp32 and cast back (mamba's rms_norm_ref)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(x.dtype)


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (1, patch, patch): one token per 16x16 patch per frame."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=(1, p, p), stride=(1, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, T, h, w)
        x = x.permute(0, 2, 3, 4, 1)  # (B, T, h, w, C), patches row-major within a frame
        return x.flatten(2, 3)  # (B, T, P, C)


class BiMambaMixer(nn.Module):
    """Mamba mixer: a forward and a backward (flipped-sequence) direction, summed before out_proj.

    Each direction: causal depthwise conv -> SiLU -> x_proj -> (dt, B, C) -> selective scan gated
    by SiLU(z). The backward direction runs the same on ``xz.flip(-1)`` with the ``*_b`` weights.
    """

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        c, e, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = e, n, r, k
        self.in_proj = nn.Linear(c, 2 * e, bias=False)
        # forward direction
        self.conv1d = nn.Conv1d(e, e, kernel_size=k, groups=e, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        # backward direction (same shapes)
        self.conv1d_b = nn.Conv1d(e, e, kernel_size=k, groups=e, bias=True)
        self.x_proj_b = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj_b = nn.Linear(r, e, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(e, n))
        self.D_b = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, c, bias=False)
        self.scan = SelectiveScan(delta_softplus=True)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's init (S4D-real A, D = 1, dt in [1e-3, 1e-1]); the checkpoint overwrites it."""
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        for dt_proj, a_log, d in (
            (self.dt_proj, self.A_log, self.D),
            (self.dt_proj_b, self.A_b_log, self.D_b),
        ):
            a_log.copy_(torch.log(a))
            d.fill_(1.0)
            nn.init.uniform_(dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
            )
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def direction(
        self,
        xz: torch.Tensor,
        conv1d: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: torch.Tensor,
        D: torch.Tensor,
    ) -> torch.Tensor:
        """One scan direction over xz (B, 2E, L) in its own time order -> y (B, E, L)."""
        x, z = xz.chunk(2, dim=1)  # (B, E, L) each
        x = F.pad(x, (self.d_conv - 1, 0))  # causal: left pad only
        x = F.silu(F.conv1d(x, conv1d.weight, conv1d.bias, groups=self.d_inner))  # (B, E, L)
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, L); bias goes in the scan
        b = b.transpose(1, 2).contiguous()  # (B, N, L)
        c = c.transpose(1, 2).contiguous()  # (B, N, L)
        A = -torch.exp(A_log.float())  # (E, N)
        return self.scan(x, dt, A, b, c, D.float(), z, dt_proj.bias.float())

    def branches(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_forward, y_backward), both (B, E, L) in the input's time order."""
        xz = self.in_proj(h).transpose(1, 2)  # (B, 2E, L)
        y_f = self.direction(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_b = self.direction(
            xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        )
        return y_f, y_b.flip(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y_f, y_b = self.branches(h)  # (B, E, L) each
        return self.out_proj((y_f + y_b).transpose(1, 2))  # (B, L, C)


class Block(nn.Module):
    """Prenorm block in the fused add+norm form: residual += h; h = mixer(norm(residual))."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps)
        self.mixer = BiMambaMixer(cfg)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = h.float() if residual is None else residual + h.float()  # fp32 residual
        h = self.mixer(self.norm(residual).to(h.dtype))
        return h, residual


class VideoMamba(nn.Module):
    """VideoMamba-M encoder: (B, 3, T, H, W) -> final RMSNorm output (B, 1 + T*P, C), CLS first."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, c))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, c))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(c, cfg.rms_norm_eps)
        for p in (self.cls_token, self.pos_embed, self.temporal_pos_embedding):
            nn.init.trunc_normal_(p, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, T, H, W) -> token sequence [CLS, f0 p0..pP-1, f1 ..] (B, 1 + T*P, C)."""
        batch = x.shape[0]
        x = self.patch_embed(x)  # (B, T, P, C)
        x = x + self.pos_embed[:, 1:].unsqueeze(1)  # spatial, shared by all frames
        x = x + self.temporal_pos_embedding.unsqueeze(2)  # (1, T, 1, C): frame t's patches only
        x = x.flatten(1, 2)  # (B, T*P, C)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)  # (B, 1, C)
        return torch.cat([cls, x], dim=1)  # (B, 1 + T*P, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual)
        return self.norm(residual + h.float()).to(h.dtype)  # (B, 1 + T*P, C)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame patch features, CLS dropped: (B, 3, T, H, W) -> (B*T, P, C)."""
        out = self.forward(x)[:, 1:]  # (B, T*P, C)
        return out.reshape(-1, self.cfg.num_patches, self.cfg.embed_dim)  # (B*T, P, C)
