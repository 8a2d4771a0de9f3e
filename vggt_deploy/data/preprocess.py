"""The one preprocessing function: training, calibration, evaluation and inference.

A mismatch between the preprocessing a model was trained with and the one used
at deployment is the most common silent accuracy loss, so every path calls
`preprocess` with the model's own `PreprocessConfig` (stored in its config and
in the ONNX metadata) and nothing else touches pixels.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vggt_deploy.data.image_header import HeaderError, ImageHeader, read_header
from vggt_deploy.errors import UserError


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize to `size` x `size`, BGR -> RGB, scale to [0, 1], normalise by mean/std."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


MAX_PIXELS = 40_000_000  # refused before decoding: a 40-megapixel image is 120 MB as BGR uint8
MAX_SIDE = 16384
MAX_UNPARSED_BYTES = 64 * 2**20  # formats whose header is not parsed here are decoded only below this size
MAX_FILE_BYTES = 512 * 2**20


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3); a clear UserError if it cannot be read.

    The header is checked before decoding (see `image_header`): more than MAX_PIXELS pixels or a side
    above MAX_SIDE, and PNG/JPEG/BMP/WebP files cut off before their end, are refused.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        if path.exists():  # reading a FIFO or a device would block or never end
            raise UserError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
        raise UserError(f"{path}: image file not found")
    data = _read_bytes(path)
    try:
        header = read_header(data)
    except HeaderError as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    if header is None:
        if len(data) > MAX_UNPARSED_BYTES:
            raise UserError(f"{path}: {len(data) / 2**20:.0f} MB in a format other than PNG, JPEG, BMP or WebP "
                            f"(limit {MAX_UNPARSED_BYTES // 2**20} MB); convert it to PNG or JPEG")
    else:
        _check_header(path, header)
    image = _decode(path, data)
    if header is None:
        _check_size(path, image.shape[1], image.shape[0])
    return image


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{path}: empty file (0 bytes), not an image")
        if size > MAX_FILE_BYTES:
            raise UserError(f"{path}: {size / 2**20:.0f} MB is too large for an image file "
                            f"(limit {MAX_FILE_BYTES // 2**20} MB)")
        return path.read_bytes()
    except PermissionError:
        raise UserError(f"{path}: permission denied; make the image readable (chmod +r)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the image ({exc.strerror or exc})") from None


def _check_size(path: Path, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise UserError(f"{path}: image header says {width}x{height} pixels; the file is broken")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise UserError(f"{path}: {width}x{height} pixels is too large (limits: {MAX_PIXELS // 10**6} megapixels, "
                        f"{MAX_SIDE} pixels a side); downscale the image first")


def _check_header(path: Path, header: ImageHeader) -> None:
    _check_size(path, header.width, header.height)
    if not header.complete:
        end = {"png": "IEND chunk", "jpeg": "end marker FFD9"}.get(header.format, "data its header declares")
        raise UserError(f"{path}: truncated or damaged {header.format.upper()} (no {end}); "
                        "copy or export the image again")


def _decode(path: Path, data: bytes) -> np.ndarray:
    """OpenCV decode with the codecs' stderr noise silenced; its exceptions become UserErrors."""
    try:
        with _quiet_decoders():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise UserError(f"{path}: not a readable image ({_opencv_reason(exc)})") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"{path}: not a readable image (opencv could not decode it)")
    return image


_QUIET_LOCK = threading.Lock()


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence OpenCV's log ("Corrupt JPEG data: ...") and what codecs print on file descriptor 2
    themselves ("libpng error: ..."): a broken image is reported once, by the UserError.

    Both are process-wide, so decodes take a lock while they are switched off.
    """
    with _QUIET_LOCK:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        saved = None
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded, closed): leave it alone
            if saved is not None:
                os.close(saved)
            saved = None
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            cv2.utils.logging.setLogLevel(level)


def _opencv_reason(exc: Exception) -> str:
    """The assertion or message inside an OpenCV error, without the source location."""
    text = " ".join(str(exc).split())
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return "its header declares more pixels than OpenCV decodes: a corrupt header or a decompression bomb"
    match = re.search(r"error: \([^)]*\) (.*?)(?: in function '[^']*')?$", text)
    return f"opencv: {(match.group(1) if match else text)[:160]}"


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
