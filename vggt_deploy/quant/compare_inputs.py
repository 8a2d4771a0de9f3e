"""What `compare` (and `export --eval-images`) feed both models: the pair itself, the image input,
the other inputs' values, the preprocessing, and the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError
from vggt_deploy.graph.onnx_io import get_metadata, load_onnx
from vggt_deploy.quant.calibrate import IMAGE_SUFFIXES, _list_images, calibration_tensors
from vggt_deploy.quant.plan import CalibrationSpec, InputSpec

PREPROCESS_KEY = "vggt.preprocess"


def load_pair(fp32_path: str | Path, qdq_path: str | Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Both models, refused unless they have the same inputs and outputs (by name)."""
    fp32, qdq = load_onnx(fp32_path), load_onnx(qdq_path)
    for kind in ("input", "output"):
        a, b = ([v.name for v in getattr(m.graph, kind) if v.name not in {t.name for t in m.graph.initializer}]
                for m in (fp32, qdq))
        if a != b:
            raise UserError(f"{qdq_path}: {kind}s {b} differ from {fp32_path}'s {a}; compare a QDQ model with "
                            "the FP32 model it was made from")
    return fp32, qdq


def graph_inputs(model: onnx.ModelProto) -> tuple[str, list[str]]:
    """The image input (the first 4-D input, else the first one) and the other inputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    image = next((i for i in inputs if len(i.type.tensor_type.shape.dim) == 4), inputs[0])
    return image.name, [i.name for i in inputs if i.name != image.name]


def extra_feeds(paths: list[Path], others: list[str]) -> dict[str, np.ndarray]:
    """Values for the inputs besides the image: `query_embeds` from a queries.npy beside either ONNX file."""
    if not others:
        return {}
    found = next((Path(p).parent / "queries.npy" for p in paths if (Path(p).parent / "queries.npy").is_file()), None)
    if others != ["query_embeds"] or found is None:
        raise UserError(f"{paths[0]}: inputs {others} besides the image need values; only query_embeds is supported, "
                        "read from a queries.npy beside the ONNX file (as `vggt-deploy export` writes it)")
    try:
        queries = np.load(found, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{found}: not a readable .npy array ({str(exc)[:160]})") from None
    if not isinstance(queries, np.ndarray) or queries.ndim != 2 or queries.dtype.kind not in "fiu":
        raise UserError(f"{found}: query embeddings must be a numeric [Q, D] array")
    return {"query_embeds": queries.astype(np.float32)}


def resolve_preprocess(models: list[onnx.ModelProto], image_input: str, size: int | None = None,
                       mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None) -> tuple[PreprocessConfig, str]:
    """The preprocessing (and channel order) of the models' image input: the `vggt.preprocess`
    metadata of the first model that has it, with `size`/`mean`/`std` overriding its fields."""
    meta: dict = {}
    for m in models:
        try:
            meta = json.loads(get_metadata(m).get(PREPROCESS_KEY, "{}"))
        except ValueError:
            meta = {}
        if meta:
            break
    dims = next(i for i in models[0].graph.input if i.name == image_input).type.tensor_type.shape.dim
    side = dims[2].dim_value if len(dims) == 4 and dims[2].dim_value == dims[3].dim_value else 0
    size, mean, std = size or meta.get("size") or side or None, mean or meta.get("mean"), std or meta.get("std")
    missing = [opt for opt, v in (("--size", size), ("--mean", mean), ("--std", std)) if v is None]
    if missing:
        raise UserError(f"the models carry no {PREPROCESS_KEY} metadata, so their image preprocessing is unknown; "
                        f"pass {', '.join(missing)}")
    if side and side != size:
        raise UserError(f"the model's {image_input!r} input is {side}x{side} but the preprocessing size is {size}; "
                        f"pass --size {side}")
    return PreprocessConfig(int(size), tuple(mean), tuple(std)), meta.get("channel_order", "rgb")


def load_images(folder: str | Path, num_images: int, pp: PreprocessConfig, channel_order: str = "rgb") -> np.ndarray:
    """Up to `num_images` images of a folder (or COCO folder), preprocessed: (N, 3, size, size) float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found" if not folder.exists() else f"{folder}: not a folder")
    files = _list_images(folder)
    if not files:
        raise UserError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    spec = CalibrationSpec(images=str(folder.resolve()), num_images=min(num_images, len(files)),
                           input=InputSpec(channel_order=channel_order))
    return calibration_tensors(spec, pp)
