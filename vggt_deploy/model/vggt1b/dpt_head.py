"""DPT dense head (depth and world points) of VGGT.

Reference: vggt/heads/dpt_head.py and vggt/heads/utils.py. From four aggregator layers
(``dpt_layers``, (B, S, P, 2C) each) the head keeps the patch tokens, LayerNorms them
(one shared ``norm``), folds them to (2C, h, w) maps, projects each to its channel count
(``projects``), adds a fixed sin/cos UV position embedding, and brings them to four
scales (``resize_layers``: x4 transposed conv, x2 transposed conv, identity, /2 conv).
The ``scratch`` part (3x3 ``layerN_rn`` convs to ``features`` channels, RefineNet-style
``refinenetN`` fusion from coarse to fine, ``output_conv1``) yields a map at 8x the
patch grid, which is resized bilinearly (align_corners=True) to the image size, gets
the position embedding again, and ``output_conv2`` (3x3 conv, ReLU, 1x1 conv) gives
``output_dim`` channels: the last is the confidence.

Frames never interact inside this head, so processing them in chunks
(``frames_chunk_size``) changes peak memory only, never the result. The track head's
feature-only variant of this class is not part of the port.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vggt_deploy.model.vggt1b.activations import activate_head

POS_EMBED_RATIO = 0.1  # the reference adds 0.1 x the sin/cos embedding
POS_EMBED_OMEGA = 100.0


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32), reproduced in float32 arithmetic.

    PyTorch fills the first half as start + step * i and the second half as
    end - step * (steps - 1 - i), so the two ends are exact.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = (end32 - start32) / np.float32(steps - 1)
    idx = np.arange(steps)
    half = steps // 2
    low = start32 + step * idx[:half].astype(np.float32)
    high = end32 - step * (steps - 1 - idx[half:]).astype(np.float32)
    return np.concatenate([low, high]).astype(np.float32)


def _sincos(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M, dim) float32 embedding [sin(pos * w), cos(pos * w)], w_k = omega ** (-k / (dim/2)), in float64."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / POS_EMBED_OMEGA**omega
    out = pos.astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)


@lru_cache(maxsize=64)
def uv_pos_embed_np(height: int, width: int, channels: int, aspect_ratio: float) -> np.ndarray:
    """(channels, height, width) float32 position embedding added to a DPT feature map, ratio included.

    UV coordinates span the image plane normalised by its diagonal (x in +-ar / sqrt(1 + ar²),
    y in +-1 / sqrt(1 + ar²), at pixel centres of the map); the first channels/2 embed u,
    the rest v.
    """
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = _linspace_f32(-span_x * (width - 1) / width, span_x * (width - 1) / width, width)
    ys = _linspace_f32(-span_y * (height - 1) / height, span_y * (height - 1) / height, height)
    uu, vv = np.meshgrid(xs, ys, indexing="xy")  # (height, width)
    emb = np.concatenate([_sincos(channels // 2, uu.reshape(-1)), _sincos(channels // 2, vv.reshape(-1))], axis=-1)
    emb = emb * np.float32(POS_EMBED_RATIO)  # float32 product, as the reference scales the float32 table
    out = np.ascontiguousarray(emb.reshape(height, width, channels).transpose(2, 0, 1))
    out.flags.writeable = False
    return out


def add_uv_pos_embed(x: torch.Tensor, image_h: int, image_w: int) -> torch.Tensor:
    """x (N, C, h, w) + the constant UV embedding for an image of aspect image_w / image_h."""
    table = uv_pos_embed_np(x.shape[-2], x.shape[-1], x.shape[-3], image_w / image_h)
    return x + torch.from_numpy(table.copy()).to(device=x.device, dtype=x.dtype)


class ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))).

    The reference uses an in-place ReLU on the unit's input before the skip addition, so the
    skip path carries relu(x), not x; written out explicitly here.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """Merge a coarser path with a skip map, refine, upsample (bilinear, align_corners=True), 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size or (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class Scratch(nn.Module):
    """The fusion decoder; attribute names are the reference's ``scratch.*`` keys."""

    def __init__(self, in_channels: tuple[int, ...], features: int, output_dim: int) -> None:
        super().__init__()
        for i, ch in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(ch, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, kernel_size=1),
        )

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Four maps (fine to coarse) -> fused map at twice the finest resolution, features // 2 channels."""
        l1, l2, l3, l4 = (getattr(self, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        out = self.refinenet4(l4, size=tuple(l3.shape[-2:]))
        out = self.refinenet3(out, l3, size=tuple(l2.shape[-2:]))
        out = self.refinenet2(out, l2, size=tuple(l1.shape[-2:]))
        out = self.refinenet1(out, l1)
        return self.output_conv1(out)


class DPTHead(nn.Module):
    """Dense prediction from aggregator layers: (B, S, H, W, output_dim - 1) and confidence (B, S, H, W).

    Args:
        dim_in: token width seen by the head (2 * embed_dim).
        output_dim: channels before activation, confidence included (depth 2, points 4).
        activation, conf_activation: see activations.activate_head.
    """

    def __init__(self, dim_in: int, patch_size: int, output_dim: int, activation: str, conf_activation: str,
                 features: int = 256, out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 pos_embed: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = Scratch(tuple(out_channels), features, output_dim)

    def forward(self, layers: list[torch.Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                frames_chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`layers`: the four tapped aggregator outputs (B, S, P, 2C); `image_hw`: input (H, W)."""
        frames = layers[0].shape[1]
        if frames_chunk_size is None or frames_chunk_size >= frames:
            return self._predict(layers, image_hw, patch_start_idx)
        chunks = [self._predict([x[:, i:i + frames_chunk_size] for x in layers], image_hw, patch_start_idx)
                  for i in range(0, frames, frames_chunk_size)]
        return torch.cat([c[0] for c in chunks], dim=1), torch.cat([c[1] for c in chunks], dim=1)

    def _predict(self, layers: list[torch.Tensor], image_hw: tuple[int, int],
                 patch_start_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_h, image_w = image_hw
        grid_h, grid_w = image_h // self.patch_size, image_w // self.patch_size
        b = layers[0].shape[0]
        maps = []
        for i, tokens in enumerate(layers):
            x = self.norm(tokens[:, :, patch_start_idx:].reshape(-1, grid_h * grid_w, tokens.shape[-1]))
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], grid_h, grid_w)
            x = self.projects[i](x)
            if self.pos_embed:
                x = add_uv_pos_embed(x, image_h, image_w)
            maps.append(self.resize_layers[i](x))
        out = self.scratch.fuse(maps)
        out = F.interpolate(out, size=(grid_h * self.patch_size, grid_w * self.patch_size), mode="bilinear",
                            align_corners=True)
        if self.pos_embed:
            out = add_uv_pos_embed(out, image_h, image_w)
        pred, conf = activate_head(self.scratch.output_conv2(out), self.activation, self.conf_activation)
        return pred.reshape(b, -1, *pred.shape[1:]), conf.reshape(b, -1, *conf.shape[1:])
