"""The two ETP (Efficient Token Projector) heads: visual features -> LLM width (facts §1.7).

ETP: Linear -> GELU -> Linear per token, tokens read row-major as a sqrt(N) x sqrt(N) grid,
adaptive average pooling to ``grid`` x ``grid``, then a depthwise 3x3 conv with a residual.
State-dict keys are exactly the official ``mlp.mlp.{0,2}.*`` and ``peg.peg.0.*``.

Adaptive pooling is done as a matmul with a fixed pooling matrix (a non-persistent buffer): the
legacy ONNX exporter rejects ``adaptive_avg_pool2d`` when the output size does not divide the input
size (14 -> 12 for the image projector), and the matrix gives the same overlapping windows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_pool_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out*out, in*in) matrix M with M @ tokens == adaptive_avg_pool2d on the row-major grid."""
    rows = torch.zeros(out_size, in_size)
    for i in range(out_size):  # torch's windows: [floor(i*in/out), ceil((i+1)*in/out))
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        rows[i, start:end] = 1.0 / (end - start)
    return torch.kron(rows, rows)  # separable: (row weight) x (column weight)


class DenseMLP(nn.Module):
    """Linear(in -> H) -> exact GELU -> Linear(H -> H), keys mlp.0.*, mlp.2.*."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PEG(nn.Module):
    """Positional encoding generator: depthwise 3x3 conv plus residual, key peg.0.*."""

    def __init__(self, hidden: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, groups=hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peg(x) + x


class ETProjector(nn.Module):
    """(B, Ntok, in) -> (B, grid*grid, H), Ntok = input_grid**2 tokens in row-major order."""

    def __init__(self, in_dim: int, hidden: int, grid: int, input_grid: int = 14):
        super().__init__()
        self.grid = grid
        self.input_grid = input_grid
        self.mlp = DenseMLP(in_dim, hidden)
        self.peg = PEG(hidden)
        pool = adaptive_pool_matrix(input_grid, grid)  # (grid^2, input_grid^2)
        self.register_buffer("pool", pool, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (B, Ntok, H)
        x = torch.matmul(self.pool.to(x.dtype), x)  # (B, grid*grid, H), pooled row-major
        x = x.reshape(x.shape[0], self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (B, H, g, g)
        x = self.peg(x)  # (B, H, g, g)
        return x.flatten(2).transpose(1, 2)  # (B, grid*grid, H)


def pool_and_regroup(features: torch.Tensor, num_chunks: int, grid: int = 7) -> torch.Tensor:
    """Per-frame pooling to grid x grid, then frames grouped into chunks (facts §1.6).

    (T, P, C) -> (T, grid*grid, C) -> (num_chunks, (T // num_chunks) * grid*grid, C), each chunk
    frame-major and row-major within a frame.
    """
    num_frames, num_patches, dim = features.shape
    side = math.isqrt(num_patches)
    x = features.reshape(num_frames, side, side, dim).permute(0, 3, 1, 2)  # (T, C, s, s)
    x = F.adaptive_avg_pool2d(x, grid)  # (T, C, g, g); 14 -> 7 is an exact 2x2 mean
    x = x.flatten(2).transpose(1, 2)  # (T, g*g, C)
    return x.reshape(num_chunks, -1, dim)  # (nc, T/nc * g*g, C)


FRAME_GRID = 7  # VideoMamba features per frame are pooled to 7x7 before the chunk regrouping


class VideoProjector(ETProjector):
    """VideoMamba features (T, P, 576) -> (num_chunks, grid*grid, H).

    Each frame is pooled to 7x7 and each chunk's 4 frames x 49 tokens are read as one 14x14 grid,
    so pooled tokens mix adjacent frames (frame boundaries fall mid-row): the official code does
    this and the weights expect it. The ETP pools that grid to ``grid`` x ``grid`` (7 in the
    official model; a config's ``mvgpt_projector.video_grid`` may pool further).
    """

    def __init__(self, in_dim: int, hidden: int, num_chunks: int = 2, grid: int = 7):
        super().__init__(in_dim, hidden, grid, input_grid=14)
        self.num_chunks = num_chunks

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pool_and_regroup(features, self.num_chunks, FRAME_GRID)  # (nc, 196, C)
        return super().forward(x)  # (nc, grid*grid, H)


class ImageProjector(ETProjector):
    """CLIP patch features (F, 196, 768) -> (F, grid*grid, H), 14x14 pooled to 12x12 per frame."""

    def __init__(self, in_dim: int, hidden: int, grid: int = 12):
        super().__init__(in_dim, hidden, grid, input_grid=14)
