"""Camera head: iterative refinement of a 9-number pose encoding per frame.

Reference: vggt/heads/camera_head.py. It reads only the camera token (token 0) of the
*last* aggregator layer, (B, S, 2C), LayerNorms it (``token_norm``) and runs
``iterations`` refinement steps. Each step embeds the current raw encoding (a learned
``empty_pose_tokens`` at the first step) with ``embed_pose``, turns it into shift,
scale and gate through ``poseLN_modulation`` (SiLU -> Linear to 3 * 2C), modulates the
affine-free LayerNorm of the camera tokens (adaLN: ``gate * (norm(x) * (1 + scale) +
shift) + x``), runs the ``trunk`` (a stack of plain transformer blocks attending across
the S frames, no RoPE, no q/k-norm) and adds ``pose_branch(trunk_norm(·))`` to the raw
encoding. The activated encoding of the last step is the camera output (B, S, 9).
"""

from __future__ import annotations

import torch
from torch import nn

from vggt_deploy.model.vggt1b.activations import activate_pose
from vggt_deploy.model.vggt1b.config import VGGT1BConfig
from vggt_deploy.model.vggt1b.layers import Block, Mlp

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}


class CameraHead(nn.Module):
    """(last aggregator layer (B, S, P, 2C)) -> activated pose encodings, one (B, S, 9) per step."""

    def __init__(self, cfg: VGGT1BConfig) -> None:
        super().__init__()
        dim = 2 * cfg.embed_dim
        self.target_dim = POSE_ENCODING_DIMS[cfg.pose_encoding]
        self.iterations = cfg.camera_iterations
        self.acts = (cfg.trans_act, cfg.quat_act, cfg.fl_act)
        self.trunk = nn.Sequential(*[
            Block(dim, cfg.camera_num_heads, cfg.camera_mlp_ratio, init_values=cfg.camera_init_values)
            for _ in range(cfg.camera_trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, self.target_dim)

    def forward(self, last_layer: torch.Tensor) -> list[torch.Tensor]:
        """Activated (B, S, 9) encodings after each refinement step; the last one is the prediction."""
        tokens = self.token_norm(last_layer[:, :, 0])  # camera tokens (B, S, 2C)
        b, s, _ = tokens.shape
        raw: torch.Tensor | None = None  # the un-activated running estimate
        steps = []
        for _ in range(self.iterations):
            source = self.empty_pose_tokens.expand(b, s, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            steps.append(activate_pose(raw, *self.acts))
        return steps
