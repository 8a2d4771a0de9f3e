"""The top-level VGGT-1B module: aggregator plus camera, depth and point heads.

Submodule names are the reference's (``aggregator``, ``camera_head``, ``depth_head``,
``point_head``), so the state dict matches the public checkpoint key for key. The
reference also builds a ``track_head`` (``enable_track=True`` by default) and the public
checkpoint stores its weights; point tracking is not ported, so this module has no
``track_head`` and ``io.load_vggt1b_weights`` drops exactly the ``track_head.`` keys
(and says how many) before an otherwise strict load.

``forward`` is the export-facing entry: a plain tensor tuple, no dicts, no autocast
(the reference disables autocast around the heads; here everything runs in the
input's dtype).
"""

from __future__ import annotations

import torch
from torch import nn

from vggt_deploy.model.vggt1b.aggregator import Aggregator
from vggt_deploy.model.vggt1b.camera_head import CameraHead
from vggt_deploy.model.vggt1b.config import VGGT1BConfig
from vggt_deploy.model.vggt1b.dpt_head import DPTHead

OUTPUT_NAMES: tuple[str, ...] = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


class VGGT1B(nn.Module):
    """VGGT: camera poses, depth maps and point maps for the frames of one or more scenes.

    ``forward(images)`` takes (S, 3, H, W) for one scene or (B, S, 3, H, W), RGB in [0, 1],
    H and W multiples of the patch size (14). Frame 0 of each scene is the reference frame.
    Like the reference, a 4-D input gets a batch dimension of 1 and the outputs keep it:

        pose_enc           (B, S, 9)        translation, quaternion (xyzw), FoV (h, w) of the last
                                            camera-head iteration; decode with
                                            activations.pose_encoding_to_extri_intri
        depth              (B, S, H, W, 1)  depth, > 0
        depth_conf         (B, S, H, W)     >= 1
        world_points       (B, S, H, W, 3)  points in the first camera's frame
        world_points_conf  (B, S, H, W)     >= 1
    """

    def __init__(self, cfg: VGGT1BConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim_in = 2 * cfg.embed_dim
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(cfg)
        dpt = {"features": cfg.dpt_features, "out_channels": tuple(cfg.dpt_out_channels), "pos_embed": cfg.dpt_pos_embed}
        self.point_head = DPTHead(dim_in, cfg.patch_size, output_dim=4, activation="inv_log",
                                  conf_activation="expp1", **dpt)
        self.depth_head = DPTHead(dim_in, cfg.patch_size, output_dim=2, activation="exp",
                                  conf_activation="expp1", **dpt)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(S, 3, H, W) or (B, S, 3, H, W) in [0, 1] -> (pose_enc, depth, depth_conf, world_points, world_points_conf)."""
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images (S, 3, H, W) or (B, S, 3, H, W), got {tuple(images.shape)}")
        cfg = self.cfg
        layers = self.aggregator(images, list(cfg.dpt_layers) + [-1])
        dpt_layers, last = layers[:4], layers[4]
        start = self.aggregator.patch_start_idx
        hw = (images.shape[-2], images.shape[-1])
        pose_enc = self.camera_head(last)[-1]
        depth, depth_conf = self.depth_head(dpt_layers, hw, start, cfg.dpt_frames_chunk_size)
        points, points_conf = self.point_head(dpt_layers, hw, start, cfg.dpt_frames_chunk_size)
        return pose_enc, depth, depth_conf, points, points_conf
