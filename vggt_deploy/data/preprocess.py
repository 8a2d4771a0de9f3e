"""The one preprocessing function: training, calibration, evaluation and inference.

A mismatch between the preprocessing a model was trained with and the one used
at deployment is the most common silent accuracy loss, so every path calls
`preprocess` with the model's own `PreprocessConfig` (stored in its config and
in the ONNX metadata) and nothing else touches pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vggt_deploy.errors import UserError


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize to `size` x `size`, BGR -> RGB, scale to [0, 1], normalise by mean/std."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3); a clear UserError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: not a readable image (opencv could not decode it)")
    return image


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """BGR uint8 image (H, W, 3) -> normalised float32 (3, size, size).

    The resize is a plain stretch, so boxes predicted in normalised coordinates map
    back to the original image by scaling with its width and height.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise UserError("preprocess expects a uint8 numpy image as read by opencv")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise UserError(f"preprocess expects an (H, W, 3) image, got shape {image.shape}")
    h, w = image.shape[:2]
    shrinking = h > cfg.size or w > cfg.size
    resized = cv2.resize(image, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].astype(np.float32) / 255.0
    out = (rgb - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
