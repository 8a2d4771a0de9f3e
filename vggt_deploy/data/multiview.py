"""Deterministic multi-view 3D scenes: textured rooms seen by a few cameras, with exact geometry.

A sequence is a room (floor, ceiling, three walls) holding a few boxes, every
surface textured as a function of its own surface coordinates, so a point looks
the same from every camera. Frame 0's camera sits at the world origin looking
down +z; the others are displaced and turned a little, as a hand-held sweep.
Each frame is ray-cast exactly (no rasteriser), which gives along with the RGB
image its depth, intrinsics, camera-from-world extrinsics (OpenCV axes: x right,
y down, z forward, the convention VGGT's pose encoding uses) and the world point
of every pixel. Everything is a pure function of (split seed, index, config).

These sequences calibrate and evaluate multi-view models (VGGT-1B) here, where
no real dataset may be downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MV_SPLIT_SEEDS: dict[str, int] = {"calib": 12_000, "eval": 13_000}  # disjoint from the 2D scene seeds


@dataclass(frozen=True)
class MultiViewConfig:
    """Image size, frames per sequence, field of view (horizontal, degrees) and boxes per room."""

    height: int = 224
    width: int = 224
    frames: int = 2
    fov_deg: float = 60.0
    boxes: int = 3


@dataclass
class Sequence:
    """One rendered sequence; S frames of H x W pixels."""

    images: np.ndarray  # [S, H, W, 3] uint8, RGB
    depth: np.ndarray  # [S, H, W] float32: camera-space z of each pixel's surface point
    intrinsics: np.ndarray  # [S, 3, 3] float32
    extrinsics: np.ndarray  # [S, 3, 4] float32: camera-from-world [R | t]
    world_points: np.ndarray  # [S, H, W, 3] float32


@dataclass(frozen=True)
class _Quad:
    """A rectangle p0 + u·a + v·b (u, v in [0, 1], a ⟂ b) with its texture parameters."""

    p0: np.ndarray
    a: np.ndarray
    b: np.ndarray
    colour: np.ndarray  # base RGB in [0, 255]
    tile: float  # checker size in scene units
    phase: float


def _room(rng: np.random.Generator, cfg: MultiViewConfig) -> list[_Quad]:
    def quad(p0, a, b) -> _Quad:
        return _Quad(np.array(p0, float), np.array(a, float), np.array(b, float), rng.uniform(40, 220, 3),
                     float(rng.uniform(0.25, 0.8)), float(rng.uniform(0, 2 * np.pi)))

    x0, x1, y_ceiling, y_floor, z0, z1 = -4.0, 4.0, -2.5, 1.5, -2.0, 9.0
    quads = [
        quad((x0, y_floor, z0), (x1 - x0, 0, 0), (0, 0, z1 - z0)),  # floor
        quad((x0, y_ceiling, z0), (x1 - x0, 0, 0), (0, 0, z1 - z0)),  # ceiling
        quad((x0, y_ceiling, z1), (x1 - x0, 0, 0), (0, y_floor - y_ceiling, 0)),  # back wall
        quad((x0, y_ceiling, z0), (0, 0, z1 - z0), (0, y_floor - y_ceiling, 0)),  # left wall
        quad((x1, y_ceiling, z0), (0, 0, z1 - z0), (0, y_floor - y_ceiling, 0)),  # right wall
    ]
    for _ in range(cfg.boxes):
        w, h, d = rng.uniform(0.6, 1.5, 3)
        cx, cz = rng.uniform(-2.2, 2.2), rng.uniform(3.5, 6.5)
        lo = np.array([cx - w / 2, y_floor - h, cz - d / 2])
        quads += [
            quad(lo, (w, 0, 0), (0, 0, d)),  # top
            quad(lo, (w, 0, 0), (0, h, 0)),  # front
            quad(lo + (0, 0, d), (w, 0, 0), (0, h, 0)),  # back
            quad(lo, (0, 0, d), (0, h, 0)),  # left
            quad(lo + (w, 0, 0), (0, 0, d), (0, h, 0)),  # right
        ]
    return quads


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """World-from-camera rotation for small turns about y (yaw), x (pitch) and z (roll), radians."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _render(quads: list[_Quad], k: np.ndarray, r_wc: np.ndarray, centre: np.ndarray, height: int, width: int):
    """RGB, depth and world points of one camera (world-from-camera rotation `r_wc`, position `centre`)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # z = 1: the ray parameter is depth
    rays = rays_cam.reshape(-1, 3) @ r_wc.T
    best = np.full(len(rays), np.inf)
    colour = np.zeros((len(rays), 3))
    light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    for q in quads:
        n = np.cross(q.a, q.b)
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((q.p0 - centre) @ n) / denom
        p = centre + t[:, None] * rays
        su = (p - q.p0) @ q.a / (q.a @ q.a)
        sv = (p - q.p0) @ q.b / (q.b @ q.b)
        hit = (t > 1e-6) & (t < best) & (su >= 0) & (su <= 1) & (sv >= 0) & (sv <= 1) & np.isfinite(t)
        if not hit.any():
            continue
        best[hit] = t[hit]
        # Texture from surface coordinates only (view-independent): a checker, a soft wave, Lambert shading.
        eu, ev = su[hit] * np.linalg.norm(q.a), sv[hit] * np.linalg.norm(q.b)
        checker = (np.floor(eu / q.tile) + np.floor(ev / q.tile)) % 2
        wave = np.sin(3.1 * eu + q.phase) * np.cos(2.3 * ev - q.phase)
        shade = 0.55 + 0.45 * abs(float(n @ light) / np.linalg.norm(n))
        colour[hit] = np.clip(q.colour * shade * (0.7 + 0.3 * checker)[:, None] + 25 * wave[:, None], 0, 255)
    if not np.isfinite(best).all():
        raise RuntimeError("a camera ray left the room: the generator's cameras must stay inside it")
    points = centre + best[:, None] * rays
    return (colour.reshape(height, width, 3).round().astype(np.uint8), best.reshape(height, width),
            points.reshape(height, width, 3))


def generate_sequence(seed: int, index: int, cfg: MultiViewConfig = MultiViewConfig()) -> Sequence:
    """Sequence `index` of the split whose seed is `seed` (same arguments, same pixels and geometry)."""
    rng = np.random.default_rng([seed, index])
    quads = _room(rng, cfg)
    focal = (cfg.width / 2) / np.tan(np.radians(cfg.fov_deg) / 2)
    k = np.array([[focal, 0, cfg.width / 2], [0, focal, cfg.height / 2], [0, 0, 1]])
    images, depths, extrinsics, points = [], [], [], []
    for frame in range(cfg.frames):
        if frame == 0:
            r_wc, centre = np.eye(3), np.zeros(3)
        else:
            r_wc = _rotation(*rng.uniform([-0.2, -0.08, -0.04], [0.2, 0.08, 0.04]))
            centre = rng.uniform([-0.6, -0.25, -0.4], [0.6, 0.25, 0.6])
        image, depth, pts = _render(quads, k, r_wc, centre, cfg.height, cfg.width)
        r_cw = r_wc.T
        images.append(image)
        depths.append(depth)
        extrinsics.append(np.concatenate([r_cw, (-r_cw @ centre)[:, None]], 1))
        points.append(pts)
    return Sequence(np.stack(images), np.stack(depths).astype(np.float32),
                    np.repeat(k[None], cfg.frames, 0).astype(np.float32), np.stack(extrinsics).astype(np.float32),
                    np.stack(points).astype(np.float32))


def sequence_tensor(seq: Sequence) -> np.ndarray:
    """The frames as a model input: [S, 3, H, W] float32 in [0, 1] (VGGT normalises inside)."""
    return np.ascontiguousarray(seq.images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def split_sequences(split: str, count: int, cfg: MultiViewConfig = MultiViewConfig()) -> list[Sequence]:
    """The first `count` sequences of a split (``calib`` or ``eval``)."""
    if split not in MV_SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(MV_SPLIT_SEEDS)}")
    return [generate_sequence(MV_SPLIT_SEEDS[split], i, cfg) for i in range(count)]
