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
import re
from pathlib import Path

import cv2
from tqdm import tqdm

from vggt_deploy.data.scenes import SPLIT_SEEDS, SceneConfig, generate_scene, scene_config_dict
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import sha256_file
from vggt_deploy.outputs import OutputFolder, check_output_path

MANIFEST = "manifest.json"
JPEG_QUALITY = 95


def _previous_set(out_dir: Path) -> set[str]:
    """The files of a calibration set this tool wrote earlier in `out_dir` (by its manifest), else nothing."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        if manifest.get("split") != "calib":
            return set()
        return {MANIFEST} | {entry["file"] for entry in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def write_calibration_set(out_dir: str | Path, num_images: int, cfg: SceneConfig = SceneConfig()) -> Path:
    """Write `num_images` calibration-split scenes and manifest.json into `out_dir` (all together).

    An existing `out_dir` is replaced only when it is empty or holds nothing but a calibration set
    this tool wrote (its manifest and the images it lists); anything else is refused.
    """
    out_dir = Path(out_dir)
    check_output_path(out_dir, [], folder=True)
    with OutputFolder(out_dir, replaces=_previous_set(out_dir)) as tmp:
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
    return out_dir


def calibration_files(folder: str | Path, verify: bool = True) -> list[Path]:
    """The image files a calibration folder's manifest lists, checked against their sha256.

    Every problem with the manifest (not JSON, wrong types, a file outside the folder, a missing or
    unreadable file, a sha256 that differs) is a UserError naming the manifest or the file.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: manifest not found (create one with `vggt-deploy data calib`)")
    regenerate = "regenerate the set with `vggt-deploy data calib`"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{manifest_path}: cannot read the manifest ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{manifest_path}: not a calibration manifest (invalid JSON: {str(exc)[:120]}); "
                        f"{regenerate}") from None
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{manifest_path}: not a calibration manifest (expected an object whose 'files' is a "
                        f"non-empty list of {{\"file\", \"sha256\"}}); {regenerate}")
    root = folder.resolve()
    paths = []
    for i, entry in enumerate(entries):
        where = f"{manifest_path}: files[{i}]"
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise UserError(f'{where} must be an object {{"file": name, "sha256": hex}}, got {json.dumps(entry)[:80]}')
        sha = entry.get("sha256")
        if verify and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise UserError(f"{where}: 'sha256' must be 64 hex digits, got {json.dumps(sha)[:80]}; {regenerate}")
        path = folder / name
        if Path(name).is_absolute() or root not in path.resolve().parents:
            raise UserError(f"{where}: {name!r} is outside {folder}; the manifest may only list files in its folder")
        if not path.is_file():
            raise UserError(f"{path}: listed in {manifest_path} but missing")
        if verify:
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
            if digest != sha.lower():
                raise UserError(f"{path}: sha256 differs from {manifest_path}; regenerate the set or fix the file")
        paths.append(path)
    return paths
