"""Geometry metrics for multi-view models (VGGT-1B): depth, point maps and cameras.

Two uses, the same formulas:

- *fidelity*: a quantized model against the same model in FP32 (the reference is
  the FP32 output). With random weights this is the only meaningful comparison;
- *accuracy*: a model against the ground truth of the synthetic sequences
  (`vggt_deploy.data.multiview`), meaningful only for trained weights.

Depth: AbsRel = mean |d - d_ref| / d_ref and δ<1.25 = the fraction of pixels with
max(d / d_ref, d_ref / d) < 1.25, over pixels whose reference depth is positive.
Against ground truth the prediction is first scaled by the median ratio (VGGT's
depth is defined up to scale). Point maps: the confidence-weighted mean Euclidean
distance, and that divided by the mean distance of the reference points from
their centroid (a scale-free figure). Cameras: the pose encoding ``absT_quaR_FoV``
(translation, quaternion x y z w, vertical and horizontal field of view) gives
camera-from-world [R | t]; the rotation error is the angle of R·R_refᵀ, the
translation error the angle between t and t_ref, both in degrees.
"""

from __future__ import annotations

import numpy as np

DELTA = 1.25


def depth_metrics(depth: np.ndarray, reference: np.ndarray, median_scale: bool = False) -> dict[str, float]:
    """AbsRel and δ<1.25 of `depth` against `reference` (same shape; pixels with reference > 0)."""
    depth = np.asarray(depth, np.float64).reshape(-1)
    ref = np.asarray(reference, np.float64).reshape(-1)
    valid = (ref > 0) & np.isfinite(ref) & np.isfinite(depth)
    d, r = depth[valid], ref[valid]
    if median_scale:
        positive = d > 0
        d = d * (np.median(r[positive]) / np.median(d[positive])) if positive.any() else d
    d = np.maximum(d, 1e-12)
    ratio = np.maximum(d / r, r / d)
    return {"abs_rel": float(np.mean(np.abs(d - r) / r)), "delta_1.25": float(np.mean(ratio < DELTA))}


def point_error(points: np.ndarray, reference: np.ndarray, conf: np.ndarray | None = None) -> dict[str, float]:
    """Confidence-weighted mean distance of [..., 3] point maps, absolute and relative to the reference's spread."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    r = np.asarray(reference, np.float64).reshape(-1, 3)
    w = np.ones(len(p)) if conf is None else np.asarray(conf, np.float64).reshape(-1)
    dist = np.linalg.norm(p - r, axis=1)
    mean = float(np.sum(w * dist) / max(np.sum(w), 1e-12))
    spread = float(np.mean(np.linalg.norm(r - r.mean(0), axis=1)))
    return {"point_error": mean, "point_error_rel": mean / max(spread, 1e-12)}


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] stored x, y, z, w (scalar last; need not be unit)."""
    q = np.asarray(quat, np.float64)
    x, y, z, w = np.moveaxis(q, -1, 0)
    s = 2.0 / np.maximum(np.sum(q * q, -1), 1e-12)
    m = [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
         s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
         s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)]
    return np.stack(m, -1).reshape(q.shape[:-1] + (3, 3))


def pose_encoding_to_extrinsics(pose_enc: np.ndarray) -> np.ndarray:
    """Camera-from-world [..., 3, 4] of ``absT_quaR_FoV`` pose encodings [..., 9]."""
    enc = np.asarray(pose_enc, np.float64)
    return np.concatenate([quat_to_matrix(enc[..., 3:7]), enc[..., :3, None]], -1)


def rotation_angle_deg(r: np.ndarray, r_ref: np.ndarray) -> np.ndarray:
    """Angle (degrees) of r·r_refᵀ, per leading index.

    From ‖r - r_ref‖_F = 2√2·sin(θ/2), which stays accurate near 0 where arccos of the trace does not.
    """
    diff = np.linalg.norm(np.asarray(r, np.float64) - np.asarray(r_ref, np.float64), axis=(-2, -1))
    return np.degrees(2 * np.arcsin(np.clip(diff / (2 * np.sqrt(2)), 0.0, 1.0)))


def translation_angle_deg(t: np.ndarray, t_ref: np.ndarray) -> np.ndarray:
    """Angle (degrees) between translation vectors; 0 where either is (almost) zero, as frame 0's is."""
    n, n_ref = np.linalg.norm(t, axis=-1), np.linalg.norm(t_ref, axis=-1)
    cos = np.sum(t * t_ref, -1) / np.maximum(n * n_ref, 1e-12)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return np.where((n < 1e-9) | (n_ref < 1e-9), 0.0, angle)


def camera_errors(extrinsics: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean rotation and translation-direction angle errors (degrees) over frames."""
    e, r = np.asarray(extrinsics, np.float64), np.asarray(reference, np.float64)
    return {"rotation_deg": float(np.mean(rotation_angle_deg(e[..., :3, :3], r[..., :3, :3]))),
            "translation_deg": float(np.mean(translation_angle_deg(e[..., :3, 3], r[..., :3, 3])))}


def fidelity(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Every metric of a model's outputs against the reference outputs (VGGT-1B output names)."""
    depth = depth_metrics(outputs["depth"], reference["depth"])
    points = point_error(outputs["world_points"], reference["world_points"], reference["world_points_conf"])
    cams = camera_errors(pose_encoding_to_extrinsics(outputs["pose_enc"]),
                         pose_encoding_to_extrinsics(reference["pose_enc"]))
    return {**{f"depth_{k}": v for k, v in depth.items()}, **points, **{f"camera_{k}": v for k, v in cams.items()}}
