"""The shipped calibration set: images from the calibration split plus a manifest.

The calibration split has its own seed, so it shares no image with train or
eval. Images are stored as JPEG at the generator's full canvas size, as a
camera would deliver them, and go through the same `preprocess` at
calibration time. The manifest records each file's sha256 so a modified or
missing file is detected before calibrating.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
from tqdm import tqdm

from vggt_deploy.data.scenes import SPLIT_SEEDS, SceneConfig, generate_scene, scene_config_dict
from vggt_deploy.errors import UserError

MANIFEST = "manifest.json"
JPEG_QUALITY = 95


def write_calibration_set(out_dir: str | Path, num_images: int, cfg: SceneConfig = SceneConfig()) -> Path:
    """Write `num_images` calibration-split scenes and manifest.json into `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = []
        for index in tqdm(range(num_images), desc="calibration images", unit="img"):
            image = generate_scene(SPLIT_SEEDS["calib"], index, cfg).image
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            assert ok
            name = f"calib_{index:04d}.jpg"
            (tmp / name).write_bytes(buf.tobytes())
            files.append({"file": name, "index": index, "sha256": hashlib.sha256(buf.tobytes()).hexdigest()})
        manifest = {
            "description": "calibration images: synthetic calibration split, disjoint from train and eval",
            "split": "calib", "seed": SPLIT_SEEDS["calib"], "jpeg_quality": JPEG_QUALITY,
            "scene_config": scene_config_dict(cfg), "num_images": num_images, "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def calibration_files(folder: str | Path, verify: bool = True) -> list[Path]:
    """The image files a calibration folder's manifest lists, checked against their sha256."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: manifest not found (create one with `vggt-deploy data calib`)")
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest_path}: not a calibration manifest ({exc})") from None
    paths = []
    for entry in entries:
        path = folder / entry["file"]
        if not path.is_file():
            raise UserError(f"{path}: listed in {manifest_path} but missing")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            raise UserError(f"{path}: sha256 differs from {manifest_path}; regenerate the set or fix the file")
        paths.append(path)
    return paths
