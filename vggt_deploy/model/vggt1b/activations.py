"""Output activations of the heads and helpers to decode the camera pose encoding.

Head activations (reference: vggt/heads/head_act.py):
    * dense heads: the last channel is a confidence, the others the prediction;
      depth uses ``exp``, world points ``inv_log`` (sign(y) * (exp|y| - 1)), both confidences
      ``expp1`` (1 + exp(c), so confidence >= 1).
    * camera head: the 9-vector is [translation (3), quaternion (4, scalar last), FoV (2: h, w)];
      VGGT-1B keeps translation and quaternion linear and passes the FoV through ReLU.

Pose decoding (reference: vggt/utils/pose_enc.py, rotation.py): ``absT_quaR_FoV`` ->
OpenCV camera-from-world extrinsics [R | t] (…, 3, 4) and pinhole intrinsics (…, 3, 3)
with the principal point at the image centre.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """sign(y) * (exp(|y|) - 1): undoes the log-compression the point head was trained with."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def _base_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x
    if kind == "inv_log":
        return inverse_log_transform(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown pose activation {kind!r}")


def activate_pose(enc: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear",
                  fl_act: str = "linear") -> torch.Tensor:
    """Apply the per-part activations to a raw (…, 9) pose encoding."""
    return torch.cat([_base_activation(enc[..., :3], trans_act), _base_activation(enc[..., 3:7], quat_act),
                      _base_activation(enc[..., 7:], fl_act)], dim=-1)


def activate_head(out: torch.Tensor, activation: str, conf_activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw dense output (N, K, H, W) -> (prediction (N, H, W, K-1), confidence (N, H, W))."""
    fmap = out.permute(0, 2, 3, 1)
    xyz, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "norm_exp":
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        pred = xyz / d * torch.expm1(d)
    elif activation == "norm":
        pred = xyz / xyz.norm(dim=-1, keepdim=True)
    elif activation == "exp":
        pred = torch.exp(xyz)
    elif activation == "relu":
        pred = F.relu(xyz)
    elif activation == "inv_log":
        pred = inverse_log_transform(xyz)
    elif activation == "xy_inv_log":
        z = inverse_log_transform(xyz[..., 2:3])
        pred = torch.cat([xyz[..., :2] * z, z], dim=-1)
    elif activation == "sigmoid":
        pred = torch.sigmoid(xyz)
    elif activation == "linear":
        pred = xyz
    else:
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return pred, conf


def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """Quaternions (…, 4) in (x, y, z, w) order, any norm -> rotation matrices (…, 3, 3)."""
    i, j, k, r = quat.unbind(-1)
    two_s = 2.0 / (quat * quat).sum(-1).clamp(min=torch.finfo(quat.dtype).eps)
    mat = torch.stack([
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ], dim=-1)
    return mat.reshape(quat.shape[:-1] + (3, 3))


def pose_encoding_to_extri_intri(pose_enc: torch.Tensor, image_size_hw: tuple[int, int],
                                 build_intrinsics: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(…, 9) ``absT_quaR_FoV`` encodings -> extrinsics (…, 3, 4) and intrinsics (…, 3, 3) or None.

    ``fy = (H / 2) / tan(fov_h / 2)``, ``fx = (W / 2) / tan(fov_w / 2)``, principal point (W/2, H/2).
    """
    t, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsics = torch.cat([quat_to_mat(quat), t[..., None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    h, w = image_size_hw
    intrinsics = pose_enc.new_zeros(pose_enc.shape[:-1] + (3, 3))
    intrinsics[..., 0, 0] = (w / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (h / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = w / 2
    intrinsics[..., 1, 2] = h / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
