"""2D rotary position embedding (RoPE) of the VGGT aggregator, as precomputed tables.

Each aggregator token of a frame has a (row, column) position: the camera and
register tokens sit at (0, 0) and patch (i, j) of the patch grid at (i + 1, j + 1).
Each attention head of width D is split in two halves: the first half is rotated by
the row position, the second by the column position. Within a half of width D/2 the
rotation frequencies are ``frequency ** (-2k / (D/2))`` for k = 0 .. D/4 - 1, each used
twice (``rotate_half`` convention: element t pairs with element t + D/4).

For a fixed patch grid the positions are static, so the whole embedding reduces to two
constant tables ``cos`` and ``sin`` of shape (P, D), P = special tokens + grid cells,
and ``x * cos + rotate(x) * sin``. The tables are built with numpy (so an exporter
sees constants, never ``cartesian_prod`` or data-dependent control flow); the float32
arithmetic of the reference (frequencies, angles) is reproduced step by step.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn


def token_positions(grid_h: int, grid_w: int, num_special: int) -> np.ndarray:
    """(num_special + grid_h * grid_w, 2) int64 (row, col) positions of one frame's tokens.

    Patches are in row-major order (the order of ``flatten`` after the patch convolution).
    When special tokens exist, patch positions are shifted by one so that position 0
    means "no position" (a zero rotation) for the special tokens.
    """
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.int64), np.arange(grid_w, dtype=np.int64), indexing="ij")
    grid = np.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1)
    if num_special > 0:
        grid = grid + 1
    return np.concatenate([np.zeros((num_special, 2), dtype=np.int64), grid], axis=0)


def inverse_frequencies(axis_dim: int, frequency: float) -> np.ndarray:
    """(axis_dim // 2,) float32 rotation frequencies for one axis half of width `axis_dim`."""
    exponents = np.arange(0, axis_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(axis_dim)
    return (np.float32(1.0) / np.power(np.float32(frequency), exponents)).astype(np.float32)


@lru_cache(maxsize=64)
def rope_tables_np(grid_h: int, grid_w: int, num_special: int, head_dim: int,
                   frequency: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (P, head_dim) float32, for every token of one frame.

    Columns [0, D/2) belong to the row axis, [D/2, D) to the column axis; inside each
    half the angle vector is ``[pos * inv_freq, pos * inv_freq]``.
    """
    inv_freq = inverse_frequencies(head_dim // 2, frequency)
    pos = token_positions(grid_h, grid_w, num_special).astype(np.float32)
    halves = []
    for axis in (0, 1):
        angles = pos[:, axis:axis + 1] * inv_freq[None, :]  # float32 products, as the reference's einsum
        halves.append(np.concatenate([angles, angles], axis=-1))
    angles = np.concatenate(halves, axis=-1).astype(np.float64)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cos.flags.writeable = sin.flags.writeable = False  # cached: shared between calls
    return cos, sin


def rotate_quarters(x: torch.Tensor) -> torch.Tensor:
    """[a, b, c, d] -> [-b, a, -d, c] over the last dim: ``rotate_half`` applied to each axis half."""
    q = x.shape[-1] // 4
    a, b, c, d = x[..., :q], x[..., q:2 * q], x[..., 2 * q:3 * q], x[..., 3 * q:]
    return torch.cat([-b, a, -d, c], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, heads, N, D) by per-token tables (P, D).

    N must be a multiple of P: frame attention has N = P (one frame per batch row),
    global attention has N = S * P (the frames of a scene laid end to end), and the
    same per-frame table applies to every frame.
    """
    b, h, n, d = x.shape
    p = cos.shape[0]
    x = x.reshape(b, h, -1, p, d)
    out = x * cos + rotate_quarters(x) * sin
    return out.reshape(b, h, n, d)


class RotaryEmbedding2D(nn.Module):
    """Holds the base frequency and hands out the constant tables for a patch grid.

    No parameters and no state-dict entries (the reference module has none either).
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = float(frequency)

    def tables(self, grid_h: int, grid_w: int, num_special: int, head_dim: int,
               device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) tensors (P, head_dim) for a frame of `num_special` + grid tokens."""
        cos, sin = rope_tables_np(grid_h, grid_w, num_special, head_dim, self.frequency)
        return (torch.from_numpy(cos.copy()).to(device=device, dtype=dtype),
                torch.from_numpy(sin.copy()).to(device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"frequency={self.frequency:g}"
