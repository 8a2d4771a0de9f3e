"""Deterministic synthetic grounding scenes.

Each scene is a textured, noisy background with 2-4 coloured shapes (overlap
allowed up to an IoU cap, later shapes occlude earlier ones). Every image is a
pure function of (split seed, image index, SceneConfig): the random generator is
seeded with both, so any image can be rebuilt alone and the same call always
gives the same pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from vggt_deploy.data.referring import SceneObject, describe
from vggt_deploy.data.vocabulary import COLOURS, SHAPES, SIZES, category_id

# Distinct seeds keep the splits disjoint: no image is drawn from two of them.
SPLIT_SEEDS: dict[str, int] = {"train": 1_000, "calib": 2_000, "eval": 3_000}

BACKGROUNDS: tuple[str, ...] = ("clutter", "stripes")


@dataclass(frozen=True)
class SceneConfig:
    """How scenes look. `background` is the domain knob (clutter or stripes)."""

    canvas: int = 256
    min_objects: int = 2
    max_objects: int = 4
    max_overlap: float = 0.25  # of the smaller box, so no object is mostly hidden
    noise_sigma: tuple[float, float] = (6.0, 14.0)
    background: str = "clutter"

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")


@dataclass
class Scene:
    """A rendered scene: BGR image, its objects, referring expressions, image label."""

    image: np.ndarray
    objects: list[SceneObject]
    refs: list[tuple[int, list[str]]]  # (object index, sentences)
    label: int  # category id of the largest object


def _muted(rng: np.random.Generator, lo: int = 50, hi: int = 200) -> np.ndarray:
    """A low-saturation colour, so clutter never looks like an object colour."""
    grey = rng.uniform(lo, hi)
    return np.clip(grey + rng.uniform(-22, 22, size=3), 0, 255)


def _background(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    n = cfg.canvas
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    c0, c1 = _muted(rng), _muted(rng)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * ramp[..., None]
    if cfg.background == "stripes":
        freq = rng.uniform(6, 18)
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy))
        img = img + rng.uniform(15, 35) * wave[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    if cfg.background == "clutter":
        for _ in range(int(rng.integers(8, 16))):
            colour = tuple(int(v) for v in _muted(rng, 30, 230))
            p1 = tuple(int(v) for v in rng.integers(0, n, size=2))
            if rng.random() < 0.5:
                p2 = tuple(int(v) for v in rng.integers(0, n, size=2))
                cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
            else:
                axes = tuple(int(v) for v in rng.integers(4, n // 5, size=2))
                cv2.ellipse(img, p1, axes, float(rng.uniform(0, 180)), 0, 360, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0)


def _draw(img: np.ndarray, obj: SceneObject, colour: tuple[int, int, int]) -> None:
    x, y, w, h = obj.box
    s = 16  # fixed-point shift: sub-pixel accurate, anti-aliased edges
    to_fp = lambda v: int(round(v * (1 << s)))
    if obj.shape == "circle":
        centre = (to_fp(x + w / 2), to_fp(y + h / 2))
        cv2.ellipse(img, centre, (to_fp(w / 2), to_fp(h / 2)), 0, 0, 360, colour, -1, cv2.LINE_AA, s)
    elif obj.shape == "square":
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        cv2.fillPoly(img, [np.round(pts * (1 << s)).astype(np.int32)], colour, cv2.LINE_AA, s)
    else:
        pts = np.array([[x + w / 2, y], [x + w, y + h], [x, y + h]])
        cv2.fillPoly(img, [np.round(pts * (1 << s)).astype(np.int32)], colour, cv2.LINE_AA, s)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box: how much of the smaller one can be hidden."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def _place(rng: np.random.Generator, cfg: SceneConfig, placed: list[SceneObject]) -> SceneObject | None:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    lo, hi = SIZES[size]
    side = rng.uniform(lo, hi) * cfg.canvas
    aspect = rng.uniform(0.85, 1.15)
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    for _ in range(50):
        x = rng.uniform(1, cfg.canvas - w - 1)
        y = rng.uniform(1, cfg.canvas - h - 1)
        box = (round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2))
        if all(_overlap(box, o.box) <= cfg.max_overlap for o in placed):
            return SceneObject(shape=shape, colour=colour, size=size, box=box)
    return None


def object_area(obj: SceneObject) -> float:
    """Geometric area of the shape in pixels (COCO's `area`, used for size ranges)."""
    w, h = obj.box[2], obj.box[3]
    return {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[obj.shape] * w * h


def generate_scene(seed: int, index: int, cfg: SceneConfig = SceneConfig()) -> Scene:
    """Render scene number `index` of the stream `seed`; deterministic in all arguments."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, cfg)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        obj = _place(rng, cfg, objects)
        if obj is None:
            continue
        base = np.array(COLOURS[obj.colour], dtype=np.float64)
        colour = np.clip(base * rng.uniform(0.75, 1.05) + rng.uniform(-25, 25, size=3), 0, 255)
        _draw(img, obj, tuple(int(v) for v in colour))
        objects.append(obj)
    sigma = rng.uniform(*cfg.noise_sigma)
    noisy = img.astype(np.float32) + rng.normal(0, sigma, size=img.shape).astype(np.float32)
    image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    refs = [(i, s) for i in range(len(objects)) if (s := describe(i, objects, rng))]
    largest = max(range(len(objects)), key=lambda i: object_area(objects[i]))
    label = category_id(objects[largest].colour, objects[largest].shape)
    return Scene(image=image, objects=objects, refs=refs, label=label)


def scene_config_dict(cfg: SceneConfig) -> dict:
    """The config as plain JSON-able data, recorded in every COCO file written."""
    return asdict(cfg)
