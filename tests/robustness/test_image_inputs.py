"""Broken images and calibration folders through the real CLI: one `error:` line, exit 2, nothing touched.

`infer --image` reads one image; `export --plan` reads a calibration folder (plain images or a
manifest). Each case writes the bad input into tmp_path and runs the command in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_checks import assert_user_error, snapshot
from click.testing import CliRunner

from vggt_deploy.cli import main

REPO = Path(__file__).resolve().parents[2]
CALIB = REPO / "calib_data"
JPEG = (CALIB / "calib_0000.jpg").read_bytes()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int = 8, height: int = 8, idat: bytes | None = None, iend: bool = True) -> bytes:
    if idat is None:  # real grey pixels for small images; a bomb's header comes with almost no data
        pixels = width * height <= 10**6
        idat = zlib.compress(b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(height)) if pixels else b"\x00")
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return out + _chunk(b"IDAT", idat) + (_chunk(b"IEND", b"") if iend else b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    """The shipped JPEG with its start-of-frame claiming another size (the file stays complete)."""
    data = bytearray(JPEG)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\x00" * 64


def _webp_vp8x(width: int, height: int) -> bytes:
    payload = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


def _encoded(ext: str) -> bytes:
    image = cv2.imread(str(CALIB / "calib_0000.jpg"))
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _file(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    return make


def _folder_named(name: str):
    def make(tmp: Path) -> Path:
        (tmp / name).mkdir()
        return tmp / name

    return make


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere.jpg"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.jpg")
    return tmp / "pipe.jpg"


def _unreadable(tmp: Path) -> Path:
    path = tmp / "locked.jpg"
    path.write_bytes(JPEG)
    path.chmod(0)
    return path


TOO_LARGE = r"pixels is too large \(limits: 40 megapixels, 16384 pixels a side\); downscale the image first"

IMAGE_CASES = [
    ("empty_file", _file("empty.png", b""), r"empty\.png: empty file \(0 bytes\), not an image"),
    ("folder", _folder_named("scene.jpg"), r"scene\.jpg: is a folder, not an image file"),
    ("missing", _missing, r"nowhere\.jpg: image file not found"),
    ("text_named_jpg", _file("notes.jpg", b"these are notes, not pixels\n"), r"notes\.jpg: not a readable image"),
    ("random_bytes", _file("noise.png", bytes(range(256)) * 8), r"noise\.png: not a readable image"),
    ("jpeg_truncated_half", _file("half.jpg", JPEG[: len(JPEG) // 2]),
     r"half\.jpg: truncated or damaged JPEG \(no end marker FFD9\); copy or export the image again"),
    ("jpeg_without_eoi", _file("noeoi.jpg", JPEG[:-2]), r"noeoi\.jpg: truncated or damaged JPEG \(no end marker FFD9\)"),
    ("jpeg_soi_only", _file("soi.jpg", b"\xff\xd8"), r"soi\.jpg: not a readable image \(JPEG without a frame header"),
    ("jpeg_bomb", _file("bomb.jpg", _jpeg_with_size(60000, 60000)), r"bomb\.jpg: 60000x60000 " + TOO_LARGE),
    ("jpeg_too_wide", _file("wide.jpg", _jpeg_with_size(20000, 100)), r"wide\.jpg: 20000x100 " + TOO_LARGE),
    ("png_truncated", _file("cut.png", _png(64, 64)[:-30]), r"cut\.png: truncated or damaged PNG \(no IEND chunk\)"),
    ("png_without_iend", _file("noend.png", _png(iend=False)), r"noend\.png: truncated or damaged PNG \(no IEND chunk\)"),
    ("png_signature_only", _file("sig.png", b"\x89PNG\r\n\x1a\n"), r"sig\.png: not a readable image \(PNG signature without"),
    ("png_bomb", _file("bomb.png", _png(100000, 100000)), r"bomb\.png: 100000x100000 " + TOO_LARGE),
    ("png_49_megapixels", _file("big.png", _png(7000, 7000)), r"big\.png: 7000x7000 " + TOO_LARGE),
    ("png_too_tall", _file("tall.png", _png(10, 20000)), r"tall\.png: 10x20000 " + TOO_LARGE),
    ("png_zero_width", _file("zero.png", _png(0, 8)), r"zero\.png: image header says 0x8 pixels; the file is broken"),
    ("png_bad_pixel_data", _file("badzlib.png", _png(idat=b"not zlib at all")),
     r"badzlib\.png: not a readable image \(opencv could not decode it\)"),
    ("bmp_bomb", _file("bomb.bmp", _bmp_header(50000, 50000)), r"bomb\.bmp: 50000x50000 " + TOO_LARGE),
    ("bmp_truncated", _file("cut.bmp", _encoded(".bmp")[:5000]), r"cut\.bmp: truncated or damaged BMP"),
    ("webp_bomb", _file("bomb.webp", _webp_vp8x(16000, 16000)), r"bomb\.webp: 16000x16000 " + TOO_LARGE),
    ("webp_truncated", _file("cut.webp", _encoded(".webp")[:1000]), r"cut\.webp: truncated or damaged WEBP"),
    ("tiff_bomb", _file("bomb.tif", b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 256, 4, 1, 90000)
                        + struct.pack("<HHII", 257, 4, 1, 90000) + b"\x00" * 8), r"bomb\.tif: 90000x90000 " + TOO_LARGE),
    ("ppm_bomb", _file("bomb.ppm", b"P6\n60000 60000\n255\n" + b"\x00" * 64), r"bomb\.ppm: 60000x60000 " + TOO_LARGE),
    ("pfm_bomb_opencv_refuses", _file("bomb.pfm", b"PF\n60000 60000\n-1.0\n" + b"\x00" * 64),
     r"bomb\.pfm: not a readable image \(its header declares more pixels than OpenCV decodes"),
    ("fifo", _fifo, r"pipe\.jpg: not a regular file \(a pipe, socket or device\)"),
    pytest.param(_unreadable, r"locked\.jpg: permission denied", id="unreadable",
                 marks=pytest.mark.skipif(AS_ROOT, reason="root reads any file")),
]
IMAGE_CASES = [pytest.param(*c[1:], id=c[0]) if type(c) is tuple else c for c in IMAGE_CASES]


@pytest.mark.parametrize("make, expect", IMAGE_CASES)
def test_bad_image_for_infer_is_one_error_line(make, expect, tiny_model_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = make(inputs)
    before = snapshot(inputs, tiny_model_dir)
    out = tmp_path / "out"
    try:
        result = CliRunner().invoke(main, ["infer", "--model", str(tiny_model_dir), "--image", str(image),
                                           "-q", "red circle", "-o", str(out)])
        assert_user_error(result, expect, before, [inputs, tiny_model_dir], out)
    finally:
        if image.exists() and not image.is_symlink():
            image.chmod(0o644 if not image.is_dir() else 0o755)


# --------------------------------------------------------------------------- calibration folders


def _calib_folder(tmp: Path, count: int = 3) -> Path:
    folder = tmp / "calib"
    folder.mkdir()
    for i in range(count):
        shutil.copyfile(CALIB / f"calib_{i:04d}.jpg", folder / f"calib_{i:04d}.jpg")
    return folder


def _with_manifest(tmp: Path, edit=None, count: int = 3) -> Path:
    folder = _calib_folder(tmp, count)
    files = [{"file": p.name, "index": i, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for i, p in enumerate(sorted(folder.glob("*.jpg")))]
    manifest = {"split": "calib", "num_images": count, "files": files}
    if edit is not None:
        manifest = edit(manifest, folder)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / "manifest.json").write_text(text)
    return folder


def _images_plus(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        folder = _calib_folder(tmp, 1)
        (folder / name).write_bytes(data)
        return folder

    return make


def _manifest(edit):
    return lambda tmp: _with_manifest(tmp, edit)


def _set(path: str, value):
    def edit(manifest, folder):
        target = manifest
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
        return manifest

    return edit


def _tamper_image(manifest, folder):
    data = bytearray((folder / "calib_0001.jpg").read_bytes())
    data[100] ^= 0xFF
    (folder / "calib_0001.jpg").write_bytes(bytes(data))
    return manifest


def _delete_image(manifest, folder):
    (folder / "calib_0002.jpg").unlink()
    return manifest


def _outside(manifest, folder):
    (folder.parent / "secret.jpg").write_bytes(JPEG)
    manifest["files"][0]["file"] = "../secret.jpg"
    manifest["files"][0]["sha256"] = hashlib.sha256(JPEG).hexdigest()
    return manifest


def _no_images(tmp: Path) -> Path:
    folder = tmp / "calib"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return folder


def _single_file(tmp: Path) -> Path:
    shutil.copyfile(CALIB / "calib_0000.jpg", tmp / "one.jpg")
    return tmp / "one.jpg"


MANIFEST = r"manifest\.json: "

CALIB_CASES = [
    ("truncated_jpeg_in_folder", _images_plus("calib_0009.jpg", JPEG[:3000]),
     r"calib_0009\.jpg: truncated or damaged JPEG \(no end marker FFD9\)"),
    ("empty_png_in_folder", _images_plus("blank.png", b""), r"blank\.png: empty file \(0 bytes\)"),
    ("png_bomb_in_folder", _images_plus("huge.png", _png(100000, 100000)), r"huge\.png: 100000x100000 " + TOO_LARGE),
    ("text_named_png_in_folder", _images_plus("notes.png", b"hello"), r"notes\.png: not a readable image"),
    ("folder_without_images", _no_images, r"calib: no calibration images found"),
    ("single_image_file", _single_file, r"one\.jpg: calibration\.images must be a folder of images, a COCO folder"),
    ("manifest_not_json", _manifest(lambda m, f: "{files: [}"), MANIFEST + r"not a calibration manifest \(invalid JSON"),
    ("manifest_deeply_nested", _manifest(lambda m, f: "[" * 200_000), MANIFEST + r"not a calibration manifest \(invalid JSON"),
    ("manifest_is_a_list", _manifest(lambda m, f: m["files"]), MANIFEST + r"not a calibration manifest \(expected an object"),
    ("manifest_files_not_a_list", _manifest(_set("files", "calib_0000.jpg")), MANIFEST + r"not a calibration manifest"),
    ("manifest_files_empty", _manifest(_set("files", [])), MANIFEST + r"not a calibration manifest"),
    ("manifest_entry_a_string", _manifest(_set("files.1", "calib_0001.jpg")),
     MANIFEST + r"files\[1\] must be an object \{\"file\": name, \"sha256\": hex\}, got \"calib_0001\.jpg\""),
    ("manifest_file_number", _manifest(_set("files.0.file", 7)), MANIFEST + r"files\[0\] must be an object"),
    ("manifest_sha256_malformed", _manifest(_set("files.2.sha256", "1234")),
     MANIFEST + r"files\[2\]: 'sha256' must be 64 hex digits, got \"1234\""),
    ("manifest_sha256_missing", _manifest(_set("files.0.sha256", None)), MANIFEST + r"files\[0\]: 'sha256' must be 64 hex"),
    ("manifest_lists_missing_file", _manifest(_delete_image), r"calib_0002\.jpg: listed in .*manifest\.json but missing"),
    ("manifest_sha256_mismatch", _manifest(_tamper_image), r"calib_0001\.jpg: sha256 differs from .*manifest\.json"),
    ("manifest_path_outside", _manifest(_outside), MANIFEST + r"files\[0\]: '\.\./secret\.jpg' is outside"),
    ("manifest_absolute_path", _manifest(_set("files.0.file", "/etc/hostname")), MANIFEST + r"files\[0\]: '/etc/hostname' is outside"),
]
CALIB_CASES = [pytest.param(*c[1:], id=c[0]) for c in CALIB_CASES]


@pytest.mark.parametrize("make, expect", CALIB_CASES)
def test_bad_calibration_images_for_export_are_one_error_line(make, expect, tiny_model_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = make(inputs)
    plan = inputs / "plan.yaml"
    plan.write_text("version: 1\ntarget: onnxruntime-cpu\n"
                    f"calibration: {{method: minmax, images: {json.dumps(str(source))}, num_images: 2}}\n"
                    "default: {precision: int8, weight_granularity: per-channel, activations: static}\n")
    before = snapshot(inputs, tiny_model_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_model_dir), "--plan", str(plan), "-o", str(out)])
    assert_user_error(result, expect, before, [inputs, tiny_model_dir], out)


# --------------------------------------------------------------------------- what stays accepted


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm"])
def test_valid_images_of_every_parsed_format_still_read(ext, tmp_path):
    from vggt_deploy.data.preprocess import read_image

    path = tmp_path / f"scene{ext}"
    path.write_bytes(_encoded(ext))
    expected = cv2.imread(str(CALIB / "calib_0000.jpg"))
    image = read_image(path)
    assert image.shape == expected.shape and image.dtype == np.uint8
    if ext in (".png", ".bmp", ".tiff", ".ppm"):  # lossless
        assert np.array_equal(image, expected)


def test_jpeg_with_trailing_zero_padding_and_progressive_jpeg_are_accepted(tmp_path):
    from vggt_deploy.data.image_header import read_header
    from vggt_deploy.data.preprocess import read_image

    padded = tmp_path / "padded.jpg"
    padded.write_bytes(JPEG + b"\x00" * 512)
    assert np.array_equal(read_image(padded), cv2.imread(str(CALIB / "calib_0000.jpg")))
    image = cv2.imread(str(CALIB / "calib_0000.jpg"))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    header = read_header(buf.tobytes())
    assert header is not None and header.complete and (header.width, header.height) == (image.shape[1], image.shape[0])
