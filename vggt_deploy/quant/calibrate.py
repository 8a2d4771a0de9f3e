"""Calibration data: images through the shared preprocessing, fed to ONNX Runtime's calibrators.

Sources: a shipped calibration folder (manifest.json with sha256s), any folder
of images, a COCO folder or instances.json, or a folder of ready ``.npy``
tensors. Ranges are computed by onnxruntime.quantization (minmax, percentile,
entropy, distribution/MSE) and cached as JSON keyed by the FP32 model's hash
and the plan's calibration section, so changing a rule never recalibrates.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vggt_deploy.data.calib_set import MANIFEST, calibration_files
from vggt_deploy.data.preprocess import PreprocessConfig, preprocess, read_image
from vggt_deploy.errors import UserError
from vggt_deploy.paths import resource
from vggt_deploy.quant.activation_stats import feed_item
from vggt_deploy.quant.plan import CalibrationSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _list_images(source: Path) -> list[Path]:
    if source.is_file() and source.suffix == ".json":
        from vggt_deploy.data.coco import load_coco

        dataset = load_coco(source.parent, ann_file=source)
        return [dataset.image_path(r) for r in dataset.records]
    if source.is_file():
        raise UserError(f"{source}: calibration.images must be a folder of images, a COCO folder or an "
                        "instances.json, not a single file")
    if not source.is_dir():
        raise UserError(f"{source}: calibration source not found (a folder of images, a COCO folder or instances.json)")
    if (source / MANIFEST).is_file():
        return calibration_files(source)
    if (source / "instances.json").is_file():
        return _list_images(source / "instances.json")
    try:
        return sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise UserError(f"{source}: cannot list the calibration folder ({exc.strerror or exc})") from None


def calibration_tensors(spec: CalibrationSpec, pp: PreprocessConfig) -> np.ndarray:
    """Load `spec.num_images` preprocessed calibration inputs (N, 3, H, W) float32.

    Relative paths are found through `vggt_deploy.paths.resource` (working directory,
    VGGT_DEPLOY_HOME, source checkout). Every input is checked before ONNX Runtime sees it:
    `.npy` tensors must be numeric (3, pp.size, pp.size) arrays, and every value must be finite.
    """
    if spec.input.npy_dir:
        folder = resource(spec.input.npy_dir).resolve()
        if not folder.is_dir():
            raise UserError(f"{folder}: calibration .npy folder not found")
        try:
            files = sorted(p for p in folder.glob("*.npy") if p.is_file())[: spec.num_images]
        except OSError as exc:
            raise UserError(f"{folder}: cannot list the calibration .npy folder ({exc.strerror or exc})") from None
        _enough(files, spec.num_images, folder)
        return np.stack([_load_npy(f, pp) for f in files])
    source = resource(spec.images).resolve()
    files = _list_images(source)[: spec.num_images]
    _enough(files, spec.num_images, source)
    out = np.empty((len(files), 3, pp.size, pp.size), np.float32)
    # the bar shows on a terminal only, and is closed (cleared) before an error is printed
    with tqdm(total=len(files), desc="calibration images", unit="img", leave=False, disable=None) as bar:
        for i, f in enumerate(files):
            image = read_image(f)
            if spec.input.channel_order == "bgr":
                image = image[:, :, ::-1].copy()  # foreign model wants BGR: preprocess flips to RGB, so pre-flip
            out[i] = preprocess(image, pp)
            if not np.isfinite(out[i]).all():
                raise UserError(f"{f}: preprocessing gives NaN or inf values; check the preprocessing "
                                f"(mean {list(pp.mean)}, std {list(pp.std)}: std must be finite and non-zero)")
            bar.update(1)
    return out


def _load_npy(path: Path, pp: PreprocessConfig) -> np.ndarray:
    """One calibration tensor: a numeric, finite (3, size, size) array, read without pickle."""
    expected = (3, pp.size, pp.size)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    except (ValueError, OSError, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "Python objects" in reason or "Object arrays" in reason:
            raise UserError(f"{path}: holds Python objects (dtype object), not numbers; calibration tensors are "
                            "float32 arrays (numpy.save of a numeric array)") from None
        raise UserError(f"{path}: not a readable .npy tensor ({reason[:160]}); save it with numpy.save") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise UserError(f"{path}: not a single .npy array (an .npz archive?); save one array with numpy.save")
    if array.dtype.kind not in "fiu" or array.dtype.fields is not None:
        raise UserError(f"{path}: dtype {array.dtype} is not numeric; calibration tensors are float32 "
                        "(ints are accepted)")
    if array.shape != expected:
        raise UserError(f"{path}: shape {tuple(array.shape)}, but calibration tensors must be (channels, height, "
                        f"width) = {expected}, preprocessed like the model's input")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are reported below
            values = np.array(array, dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .npy tensor ({str(exc)[:160]})") from None
    finally:
        del array
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise UserError(f"{path}: {bad} NaN or inf value(s) (or values beyond float32); calibration tensors "
                        "must be finite")
    return values


def _enough(files: list, wanted: int, source: Path) -> None:
    if not files:
        raise UserError(f"{source}: no calibration images found")
    if len(files) < wanted:
        raise UserError(f"{source}: {len(files)} calibration images, but the plan asks for {wanted} "
                        "(lower calibration.num_images or add images)")


class TensorReader:
    """An onnxruntime `CalibrationDataReader` over in-memory inputs, one item per feed (`feed_item`)."""

    def __init__(self, images: np.ndarray, image_input: str, extra_feeds: dict[str, np.ndarray] | None = None) -> None:
        self.images, self.image_input = images, image_input
        self.extra = extra_feeds or {}
        self.index = 0
        self.bar = tqdm(total=len(images), desc="calibrating", unit="img", leave=False, disable=None)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            self.bar.close()
            return None
        feed = {self.image_input: feed_item(self.images, self.index), **self.extra}
        self.index += 1
        self.bar.update(1)
        return feed

    def __len__(self) -> int:
        return len(self.images)

    def rewind(self) -> None:
        self.index = 0


def ort_method(spec: CalibrationSpec):
    """The onnxruntime CalibrationMethod and calibrator options for a plan's method.

    `auto` ranges are computed here (`auto_calib.py`) and handed over through the range cache
    labelled MinMax, the label quantize_static checks the cache against.
    """
    from onnxruntime.quantization import CalibrationMethod

    if spec.method in ("minmax", "auto"):
        return CalibrationMethod.MinMax, {}
    if spec.method == "percentile":
        return CalibrationMethod.Percentile, {"CalibPercentile": spec.percentile}
    if spec.method == "entropy":
        return CalibrationMethod.Entropy, {}
    return CalibrationMethod.Distribution, {}  # MSE-optimal clipping via the distribution calibrator


# TensorRT's entropy calibrator histograms 2048 bins into 128 quantized levels. onnxruntime's
# quantize_static cannot pass bin counts to its entropy calibrator, whose defaults (128 bins, 128
# quantized bins) leave the full range as the only candidate threshold: "entropy" silently equals
# minmax there (measured: identical ranges for all 257 tensors of vggt_small).
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def precompute_entropy_ranges(model, reader: TensorReader, cache_file: Path, op_types: list[str]) -> None:
    """KL-divergence (entropy) ranges with 2048 bins, written to the range cache quantize_static reads."""
    import tempfile

    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="vggt-entropy.") as tmp:
        path = Path(tmp) / "model.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data rewrites the proto it is given
        onnx.save(copy, str(path), save_as_external_data=True)
        calibrator = create_calibrator(path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy, use_external_data_format=True,
                                       extra_options={"num_bins": ENTROPY_BINS,
                                                      "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache_file)


def cache_path(cache_dir: Path, fp32_bytes: bytes, spec: CalibrationSpec, target: str | None = None) -> Path:
    """Range-cache file for this model and calibration section (rules are not part of the key).

    `auto` scores ranges with the target's activation quantizer (int8 symmetric on TensorRT,
    uint8 elsewhere), so its caches differ by that flavour.
    """
    model_hash = hashlib.sha256(fp32_bytes).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_bins{ENTROPY_BINS}" if spec.method == "entropy" else ""  # caches of the degenerate 128-bin search differ
    if spec.method == "auto":
        suffix = "_auto_s8" if target == "tensorrt" else "_auto_u8"
    return cache_dir / f"ranges_{model_hash}_{spec.cache_key()}{suffix}.json"
