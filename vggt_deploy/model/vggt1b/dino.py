"""Patch embeddings of the aggregator: the DINOv2 ViT with registers, or one strided conv.

``DinoPatchEmbed`` mirrors the reference ``DinoVisionTransformer`` (vggt/layers/
vision_transformer.py) as the aggregator uses it: images (N, 3, H, W), already
ImageNet-normalised, go through a 14x14 patch convolution, get a class token and the
(resized) learned position embedding, then the register tokens are inserted after the
class token, the blocks run, and the final LayerNorm'd *patch* tokens (N, h*w, C) come
out. State-dict names: ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``
(kept for checkpoint compatibility, unused at inference), ``patch_embed.proj``,
``blocks.<i>``, ``norm``.

The position embedding is learned on a square M x M grid (37 x 37 for 518 px). For
another grid the reference resizes it with ``F.interpolate(mode="bicubic",
antialias=True)``. That resize is linear and separable, so here it is two constant
matrices (computed with numpy by the same weight formula PyTorch uses) applied as
``Mh @ P @ Mwᵀ``: no resize op, no data-dependent branches in an exported graph.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from vggt_deploy.model.vggt1b.layers import Block


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: (N, 3, H, W) -> (N, (H/p) * (W/p), C), row-major."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def _keys_cubic(x: float, a: float = -0.5) -> float:
    """Cubic convolution kernel with a = -0.5: the antialiased bicubic filter of PyTorch (and PIL)."""
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@lru_cache(maxsize=64)
def aa_bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
    """(out_size, in_size) float64 weights of a 1D antialiased bicubic resize, align_corners=False.

    Row i holds the weights PyTorch's ``antialias=True`` kernel gives output sample i:
    the kernel is widened by the downscale factor, sampled at the input pixel centres
    and normalised to sum to one. `scale_factor` (output / input) overrides the size ratio,
    as passing ``scale_factor`` to ``F.interpolate`` does.
    """
    scale = 1.0 / scale_factor if scale_factor else in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0  # bicubic taps span +-2 input pixels before widening
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_taps = math.ceil(support) * 2 + 1
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as the C++ cast does
        count = min(max(min(int(center + support + 0.5), in_size) - lo, 0), max_taps)
        taps = [_keys_cubic((j + lo - center + 0.5) * invscale) for j in range(count)]
        total = sum(taps)
        for j, tap in enumerate(taps):
            weights[i, lo + j] = tap / total if total != 0.0 else tap
    weights.flags.writeable = False
    return weights


class DinoPatchEmbed(nn.Module):
    """DINOv2 ViT with register tokens, returning its normalised patch tokens.

    Args:
        img_size: image side the position embedding was trained for (square grid img_size / patch).
        interpolate_antialias, interpolate_offset: how the position embedding is resized for other
            grids (the aggregator passes True and 0.0).
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, num_register_tokens: int = 4, init_values: float = 1.0,
                 interpolate_antialias: bool = True, interpolate_offset: float = 0.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # masked-image training only
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, 1 + grid_h * grid_w, C): class position plus the patch positions resized to the grid."""
        m = self.grid
        if grid_h == m and grid_w == m:
            return self.pos_embed
        if not self.interpolate_antialias:
            raise NotImplementedError("only the antialiased resize of the reference aggregator is implemented")
        pos = self.pos_embed.float()
        c = pos.shape[-1]
        if self.interpolate_offset:
            sh = aa_bicubic_matrix(m, grid_h, (grid_h + self.interpolate_offset) / m)
            sw = aa_bicubic_matrix(m, grid_w, (grid_w + self.interpolate_offset) / m)
        else:
            sh, sw = aa_bicubic_matrix(m, grid_h), aa_bicubic_matrix(m, grid_w)
        mat_h = torch.from_numpy(sh.astype(np.float32)).to(pos.device)
        mat_w = torch.from_numpy(sw.astype(np.float32)).to(pos.device)
        grid = pos[0, 1:].reshape(m, m, c).permute(2, 0, 1)  # (C, M, M)
        grid = mat_h @ grid @ mat_w.transpose(0, 1)  # (C, grid_h, grid_w)
        patches = grid.permute(1, 2, 0).reshape(1, grid_h * grid_w, c)
        return torch.cat([pos[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) -> LayerNorm'd patch tokens (N, (H/p) * (W/p), C)."""
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(grid_h, grid_w)
        if self.register_tokens is not None:  # registers carry no position embedding
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens:]
