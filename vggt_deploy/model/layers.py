"""Transformer layers of the backbone, written for export and for quantization.

Attention keeps separate q, k and v projections and residuals are written as
``branch + x``: ONNX Runtime's attention fusion matches that pattern, while a
fused qkv projection defeated it on most blocks (see the export issue).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention.

    Args:
        dim: token width.
        num_heads: heads; head dim = dim // num_heads.
        qk_norm: LayerNorm over each head's queries and keys (stabilises training).
    """

    fused_attn = False  # explicit matmul/softmax by default: exporters and quantizers see every op
    keep_attention = False  # set on an instance to keep its last attention probabilities (grounding maps)
    # Quantization-aware training (quant/qat.py) sets a plain dict of fake quantizers on an instance,
    # {"q", "k", "a", "v"}: the inputs of Q·Kᵀ and attention·V. Not a submodule, so no state_dict key.
    matmul_quant: dict | None = None

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor, linear: nn.Linear, norm: nn.Module | None, scale: float = 1.0) -> torch.Tensor:
        """Project x (B, T, C) to heads (B, T, nh, hs), normalised per head and multiplied by `scale`.

        The per-head LayerNorm runs on a 3D (B, T*nh, hs) view: OpenVINO turns a 3D LayerNorm into
        one MVN kernel but splits a 4D one into three nodes (ReduceMean, Subtract, RMS), which cost
        6% of the int8 model's latency. The softmax scale is folded into the norm's affine weights,
        so no Multiply sits between the norm and Q·Kᵀ.
        """
        b, t, _ = x.shape
        y = linear(x)
        if isinstance(norm, nn.LayerNorm):
            y = y.reshape(b, t * self.num_heads, self.head_dim)
            if norm.weight is not None and norm.bias is not None:
                y = F.layer_norm(y, norm.normalized_shape, norm.weight * scale, norm.bias * scale, norm.eps)
            else:
                y = norm(y) * scale
        elif scale != 1.0:
            y = y * scale
        return y.reshape(b, t, self.num_heads, self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) attends to `context` (B, S, C) or itself; positions add to q/k only.

        `mask` is an additive bias broadcastable to (B, nh, T, S), e.g. -inf on padding.
        """
        context = x if context is None else context
        q_in = x if query_pos is None else x + query_pos
        k_in = context if key_pos is None else context + key_pos
        q = self._heads(q_in, self.q, self.q_norm, self.scale)  # (B, T, nh, hs), already scaled
        k = self._heads(k_in, self.k, self.k_norm)  # (B, S, nh, hs)
        v = self._heads(context, self.v, None).transpose(1, 2)  # (B, nh, S, hs)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v, attn_mask=mask, scale=1.0)
        else:
            fq = self.matmul_quant
            if fq is not None:
                q, k = fq["q"](q), fq["k"](k)
            # Kᵀ as one (0, 2, 3, 1) transpose rather than two. OpenVINO 2026.4 takes the Q and V
            # transposes into its fused attention subgraph but still runs this one and the output
            # transpose as separate nodes (4% of the int8 model's latency).
            attn = q.transpose(1, 2) @ k.permute(0, 2, 3, 1)  # (B, nh, T, S)
            if mask is not None:
                attn = attn + mask
            attn = attn.softmax(dim=-1)
            if self.keep_attention:
                self.last_attention = attn.detach()
            if fq is not None:
                attn, v = fq["a"](attn), fq["v"](v)
            out = attn @ v  # (B, nh, T, hs)
        b, _, t, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: two residual lines."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn(self.norm1(x), mask=mask) + x
        x = self.mlp(self.norm2(x)) + x
        return x


class PatchEmbed(nn.Module):
    """Convolutional patch embedding: log2(stride) stride-2 3x3 convs, then a 1x1 to width.

    Early convolutions give a ViT better low-level features and make it train far
    faster from scratch than a single large-kernel patchify, at little compute.
    """

    def __init__(self, stride: int, dim: int) -> None:
        super().__init__()
        stages = stride.bit_length() - 1
        widths = [3] + [min(dim, 32 * 2**i) for i in range(stages)]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GELU()]
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(widths[-1], dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(images))  # (B, C, H/s, W/s)
        return x.flatten(2).transpose(1, 2)  # (B, T, C)
