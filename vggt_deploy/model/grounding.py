"""Geometry-grounding tokens: reference boxes, their encoding, two-way cross-attention.

Each grounding token owns an explicit 2D prior, a reference box on a regular
grid. Patches and grounding tokens are located by the same encoding of a box
(cx, cy, w, h), so "this token looks near here" and "this patch is here" live in
one space. At the configured layers a `GroundingLayer` lets the tokens read the
image and the image read the tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vggt_deploy.model.layers import Attention, Mlp


def grid_boxes(grid: int, scale: float = 1.0) -> torch.Tensor:
    """Boxes (grid*grid, 4) as normalised (cx, cy, w, h) of a grid's cells, row-major.

    `scale` widens each box relative to its cell (reference boxes start larger
    than a cell so one token can cover an object straddling cells).
    """
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    size = torch.full_like(cx, min(1.0, scale / grid))
    return torch.stack([cx, cy, size, size], dim=-1).reshape(-1, 4)


def box_sincos(boxes: torch.Tensor, dim: int, temperature: float = 1000.0) -> torch.Tensor:
    """Fixed sine/cosine features of boxes (..., 4) -> (..., dim); dim divisible by 8."""
    if dim % 8:
        raise ValueError("box encoding width must be divisible by 8")
    per_coord = dim // 4
    freqs = temperature ** (-torch.arange(per_coord // 2, dtype=torch.float32) / (per_coord // 2))
    angles = boxes[..., None] * 2 * math.pi * freqs  # (..., 4, per_coord/2)
    feats = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 4, per_coord)
    return feats.flatten(-2)


def spatial_prior(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Log-Gaussian locality prior (Nq, Nk) between box centres, in units of each query box's size.

    0 where a key sits at the query box's centre, -0.5 one box-width away, -2
    two widths away. Added to attention logits it tells a grounding token to
    look near its reference box first (the geometry prior); it is a constant,
    so exporters fold it.
    """
    d = queries[:, None, :2] - keys[None, :, :2]  # (Nq, Nk, 2)
    sigma = queries[:, None, 2:]
    return -0.5 * (d / sigma).pow(2).sum(-1)


class BoxEncoding(nn.Module):
    """Learned projection of the fixed box features, shared by patches and tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.proj(box_sincos(boxes, self.dim))


class GroundingLayer(nn.Module):
    """Two-way cross-attention between grounding tokens g (B, N, C) and image tokens x (B, T, C).

    Order: tokens attend to each other (so two tokens learn not to claim one
    object), tokens attend to the image, token MLP, then the image attends to the
    tokens. Positions (patch boxes, reference boxes) are re-added to queries and
    keys at every attention, and the cross-attentions carry the spatial prior
    (`spatial_prior`) scaled by a learned per-layer factor, so the geometric
    prior is never washed out.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm_t2i = nn.LayerNorm(dim)
        self.norm_img = nn.LayerNorm(dim)
        self.token_to_image = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_i2t_img = nn.LayerNorm(dim)
        self.norm_i2t_tok = nn.LayerNorm(dim)
        self.image_to_token = Attention(dim, num_heads, qk_norm=qk_norm)
        self.prior_scale = nn.Parameter(torch.ones(()))

    def forward(
        self, g: torch.Tensor, x: torch.Tensor, g_pos: torch.Tensor, x_pos: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """g (B, N, C), x (B, T, C), positions (1, N|T, C), prior (N, T) -> updated g, x."""
        bias = self.prior_scale * prior
        h = self.norm_self(g)
        g = self.self_attn(h, query_pos=g_pos, key_pos=g_pos) + g
        g = self.token_to_image(self.norm_t2i(g), self.norm_img(x), query_pos=g_pos, key_pos=x_pos, mask=bias) + g
        g = self.mlp(self.norm_mlp(g)) + g
        x = self.image_to_token(
            self.norm_i2t_img(x), self.norm_i2t_tok(g), query_pos=x_pos, key_pos=g_pos, mask=bias.t()
        ) + x
        return g, x
