"""Reading, writing and annotating ONNX files: the helpers every later stage shares.

`load_onnx` turns every failure into one `UserError` naming the file; `save_onnx`
writes atomically (external data above 2 GB); metadata travels in the model's
``metadata_props`` (model name, config hash, plan, preprocessing).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from vggt_deploy.errors import UserError

SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of each node
TWO_GB = 2**31


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write atomically; weights go to external data above 2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        if model.ByteSize() >= TWO_GB:
            onnx.save(model, tmp, save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, turning every failure into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises many types (DecodeError, ValidationError, OSError)
        raise UserError(f"{path}: not a valid ONNX model ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from None
    return model
