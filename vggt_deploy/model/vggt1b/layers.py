"""Transformer pieces shared by the DINO trunk, the aggregator and the camera head.

Parameter names follow the reference (``vggt/layers``): ``attn.qkv`` is one fused
projection, ``attn.q_norm`` / ``attn.k_norm`` exist only with q/k-norm, ``ls1`` /
``ls2`` (LayerScale ``gamma``) only when ``init_values`` is non-zero, and the MLP is
``mlp.fc1`` -> GELU -> ``mlp.fc2``. Shapes: tokens are (B, N, C) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vggt_deploy.model.vggt1b.rope import apply_rope


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma``; gamma starts at `init_values`."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf form) -> fc2; `out_features` defaults to `in_features`."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head q/k LayerNorm and 2D RoPE.

    Order of operations as in the reference: qkv projection, q/k-norm, RoPE on q and k,
    softmax(q kᵀ / sqrt(d)) v, output projection.
    """

    # The reference calls F.scaled_dot_product_attention. Exporters set this False to get
    # plain MatMul/Softmax nodes; both agree to float32 rounding.
    fused_attn = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # The reference builds q/k-norm with LayerNorm's default eps (1e-5) whatever the block's eps.
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C); `rope` = (cos, sin) tables (P, head_dim) with N a multiple of P."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``.

    Args:
        norm_eps: eps of norm1/norm2 (1e-5 in the aggregator and camera head, 1e-6 in DINO).
        init_values: LayerScale init; 0 or None leaves ls1/ls2 out (no state-dict keys).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values: float | None = None,
                 qk_norm: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
