"""The VGGT aggregator: per-frame patch tokens, then alternating frame and global attention.

Input images (B, S, 3, H, W) in [0, 1] are normalised with the ImageNet mean/std
(non-persistent buffers ``_resnet_mean`` / ``_resnet_std``: not in the state dict,
exactly as in the reference) and embedded frame by frame (DINOv2 or a conv). Every
frame then gets one camera token and ``num_register_tokens`` register tokens in front
of its patch tokens; the first frame of a scene uses variant 0 of these learned tokens,
all later frames variant 1 (``camera_token`` (1, 2, 1, C), ``register_token``
(1, 2, R, C)). So each frame has P = 1 + R + h*w tokens and patch tokens start at
``patch_start_idx`` = 1 + R.

Then ``depth`` frame blocks and ``depth`` global blocks alternate: a frame block
attends within each frame (tokens as (B*S, P, C)), a global block across all frames of
a scene (tokens as (B, S*P, C)); both use 2D RoPE with q/k-norm. After each pair, the
frame block's output and the global block's output are concatenated on channels, giving
layer output i of shape (B, S, P, 2C). The heads read some of these layer outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vggt_deploy.model.vggt1b.config import VGGT1BConfig
from vggt_deploy.model.vggt1b.dino import DinoPatchEmbed, PatchEmbed
from vggt_deploy.model.vggt1b.layers import Block
from vggt_deploy.model.vggt1b.rope import RotaryEmbedding2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_and_rest(tokens: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """(1, 2, X, C) learned tokens -> (batch * frames, X, C): variant 0 for frame 0, variant 1 after."""
    _, _, x, c = tokens.shape
    first = tokens[:, :1].expand(batch, 1, x, c)
    rest = tokens[:, 1:].expand(batch, frames - 1, x, c)
    return torch.cat([first, rest], dim=1).reshape(-1, x, c)


class Aggregator(nn.Module):
    """Alternating-attention trunk; ``forward`` returns the requested layer outputs (B, S, P, 2C)."""

    def __init__(self, cfg: VGGT1BConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.depth = cfg.depth
        self.aa_order = tuple(cfg.aa_order)
        self.aa_block_size = cfg.aa_block_size
        self.patch_start_idx = cfg.patch_start_idx
        self.head_dim = c // cfg.num_heads
        if cfg.uses_dino:
            depth, heads = cfg.dino_geometry
            self.patch_embed: nn.Module = DinoPatchEmbed(
                cfg.img_size, cfg.patch_size, c, depth, heads, mlp_ratio=cfg.dino_mlp_ratio,
                num_register_tokens=cfg.num_register_tokens, init_values=cfg.dino_init_values,
                interpolate_antialias=cfg.dino_interpolate_antialias,
                interpolate_offset=cfg.dino_interpolate_offset)
        else:
            self.patch_embed = PatchEmbed(cfg.patch_size, c)
        self.rope = RotaryEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None

        def blocks() -> nn.ModuleList:
            return nn.ModuleList([
                Block(c, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                      ffn_bias=cfg.ffn_bias, init_values=cfg.init_values, qk_norm=cfg.qk_norm)
                for _ in range(cfg.depth)
            ])

        self.frame_blocks = blocks()
        self.global_blocks = blocks()
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c))
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, c))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """images (B, S, 3, H, W) in [0, 1] -> [layer output (B, S, P, 2C) for each index in `layers`].

        Negative indices count from the end (-1 = the last pair of blocks). Blocks after the
        last requested layer are skipped: nothing downstream could see them.
        """
        b, s, _, h, w = images.shape
        wanted = sorted({i % self.depth for i in layers})
        images = (images - self._resnet_mean) / self._resnet_std
        patches = self.patch_embed(images.reshape(-1, 3, h, w))  # (B*S, h*w, C)
        c = patches.shape[-1]
        tokens = torch.cat([first_and_rest(self.camera_token, b, s), first_and_rest(self.register_token, b, s),
                            patches], dim=1)
        p = tokens.shape[1]
        rope = None
        if self.rope is not None:
            rope = self.rope.tables(h // self.patch_size, w // self.patch_size, self.patch_start_idx,
                                    self.head_dim, tokens.device, tokens.dtype)

        outputs: dict[int, torch.Tensor] = {}
        for group in range(wanted[-1] // self.aa_block_size + 1):
            produced: dict[str, list[torch.Tensor]] = {}
            for kind in self.aa_order:
                if kind == "frame":
                    tokens, blocks = tokens.reshape(-1, p, c), self.frame_blocks  # each frame alone
                else:
                    tokens, blocks = tokens.reshape(b, -1, c), self.global_blocks  # all frames of a scene
                produced[kind] = []
                for i in range(self.aa_block_size):
                    tokens = blocks[group * self.aa_block_size + i](tokens, rope=rope)
                    produced[kind].append(tokens)
            for i in range(self.aa_block_size):
                index = group * self.aa_block_size + i
                if index in wanted:
                    frame_out = produced["frame"][i].reshape(b, -1, p, c)
                    global_out = produced["global"][i].reshape(b, -1, p, c)
                    outputs[index] = torch.cat([frame_out, global_out], dim=-1)
        return [outputs[i % self.depth] for i in layers]
