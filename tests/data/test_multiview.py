"""Multi-view synthetic sequences: deterministic, and their geometry is exact (projection round trip)."""

import numpy as np

from vggt_deploy.data.multiview import MultiViewConfig, generate_sequence, sequence_tensor, split_sequences

CFG = MultiViewConfig(height=40, width=56, frames=3)


def test_same_arguments_same_sequence_and_splits_differ():
    a, b = generate_sequence(1, 2, CFG), generate_sequence(1, 2, CFG)
    for field in ("images", "depth", "intrinsics", "extrinsics", "world_points"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, generate_sequence(1, 3, CFG).images)
    calib, evals = split_sequences("calib", 1, CFG)[0], split_sequences("eval", 1, CFG)[0]
    assert not np.array_equal(calib.images, evals.images)
    assert a.images.shape == (3, 40, 56, 3) and a.images.dtype == np.uint8 and a.images.std() > 10


def test_every_pixel_projects_back_onto_itself_at_its_depth():
    seq = generate_sequence(0, 0, CFG)
    v, u = np.mgrid[0:40, 0:56] + 0.5
    assert np.allclose(seq.extrinsics[0], np.concatenate([np.eye(3), np.zeros((3, 1))], 1))
    for s in range(CFG.frames):
        r, t, k = seq.extrinsics[s, :, :3], seq.extrinsics[s, :, 3], seq.intrinsics[s]
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-5)
        cam = seq.world_points[s] @ r.T + t
        assert np.allclose(cam[..., 2], seq.depth[s], rtol=1e-4, atol=1e-4)
        pix = cam @ k.T
        assert np.allclose(pix[..., 0] / pix[..., 2], u, atol=1e-3)
        assert np.allclose(pix[..., 1] / pix[..., 2], v, atol=1e-3)
    assert (seq.depth > 0).all()


def test_a_point_seen_by_two_cameras_has_the_same_colour():
    seq = generate_sequence(0, 4, MultiViewConfig(height=64, width=64, frames=2, boxes=0))
    pts = seq.world_points[0].reshape(-1, 3)
    r, t, k = seq.extrinsics[1, :, :3], seq.extrinsics[1, :, 3], seq.intrinsics[1]
    cam = pts @ r.T + t
    pix = cam @ k.T
    u, v = (pix[:, 0] / pix[:, 2]).astype(int), (pix[:, 1] / pix[:, 2]).astype(int)
    inside = (u >= 0) & (u < 64) & (v >= 0) & (v < 64)
    visible = inside.copy()
    visible[inside] = np.abs(seq.depth[1][v[inside], u[inside]] - cam[inside, 2]) < 0.02
    assert visible.mean() > 0.3
    c0 = seq.images[0].reshape(-1, 3)[visible].astype(float)
    c1 = seq.images[1][v[visible], u[visible]].astype(float)
    assert np.median(np.abs(c0 - c1)) < 25  # same surface, same texture (pixel quantisation aside)


def test_model_input_is_frames_first_in_unit_range():
    x = sequence_tensor(generate_sequence(0, 0, CFG))
    assert x.shape == (3, 3, 40, 56) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
