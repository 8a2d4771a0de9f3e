"""Geometry fidelity metrics: depth, point maps and cameras from the pose encoding."""

import numpy as np

from vggt_deploy.bench.geometry import (
    camera_errors,
    depth_metrics,
    fidelity,
    point_error,
    pose_encoding_to_extrinsics,
    quat_to_matrix,
    rotation_angle_deg,
)
from vggt_deploy.data.multiview import MultiViewConfig, generate_sequence


def test_depth_metrics():
    ref = np.random.default_rng(0).uniform(1, 5, (2, 8, 8))
    assert depth_metrics(ref, ref) == {"abs_rel": 0.0, "delta_1.25": 1.0}
    m = depth_metrics(1.5 * ref, ref)
    assert np.isclose(m["abs_rel"], 0.5) and m["delta_1.25"] == 0.0
    assert np.isclose(depth_metrics(3 * ref, ref, median_scale=True)["abs_rel"], 0.0)


def test_point_error_weights_by_confidence():
    ref = np.random.default_rng(1).normal(size=(10, 3))
    moved = ref.copy()
    moved[0] += [3.0, 0, 0]
    conf = np.ones(10)
    assert np.isclose(point_error(moved, ref, conf)["point_error"], 0.3)
    conf[0] = 0.0
    assert point_error(moved, ref, conf)["point_error"] == 0.0


def test_quaternions_are_scalar_last_and_errors_are_angles():
    half = np.radians(90) / 2
    rz = quat_to_matrix(np.array([0, 0, np.sin(half), np.cos(half)]))
    assert np.allclose(rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.isclose(rotation_angle_deg(rz, np.eye(3)), 90.0)
    seq = generate_sequence(0, 1, MultiViewConfig(height=8, width=8, frames=3))
    assert camera_errors(seq.extrinsics, seq.extrinsics) == {"rotation_deg": 0.0, "translation_deg": 0.0}


def test_fidelity_of_identical_outputs_is_perfect_and_noise_shows():
    rng = np.random.default_rng(2)
    enc = np.concatenate([rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 2, 4)), np.ones((1, 2, 2))], -1)
    ref = {"pose_enc": enc, "depth": rng.uniform(1, 3, (1, 2, 4, 4, 1)), "world_points": rng.normal(size=(1, 2, 4, 4, 3)),
           "world_points_conf": np.ones((1, 2, 4, 4))}
    same = fidelity(ref, ref)
    assert same["depth_abs_rel"] == 0.0 and same["point_error"] == 0.0 and same["camera_rotation_deg"] < 1e-5
    noisy = {**ref, "pose_enc": enc + [0, 0, 0, 0.2, 0, 0, 0, 0, 0]}
    assert fidelity(noisy, ref)["camera_rotation_deg"] > 1.0
    assert pose_encoding_to_extrinsics(enc).shape == (1, 2, 3, 4)
