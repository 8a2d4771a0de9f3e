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
# Rows per frame along the token axis (special tokens first), written by exporters of multi-frame models
# (VGGT-1B) and read by `calibration.exclude_tokens: {period: frame}`.
TOKENS_PER_FRAME_KEY = "vggt.tokens_per_frame"
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


def over_2gb(model: onnx.ModelProto) -> bool:
    """True when `model` cannot be one protobuf (2 GB or more); upb refuses even to size one far above it."""
    try:
        return model.ByteSize() >= TWO_GB
    except Exception:  # noqa: BLE001 - google.protobuf.message.EncodeError, whichever backend raises it
        return True


def has_external_data(model: onnx.ModelProto) -> bool:
    """True when some initializer's values are in an external data file, not in `model` (a graph read with
    ``onnx.load(..., load_external_data=False)``); its readers need the file's folder."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def onnx_size_mb(path: str | Path) -> float:
    """Size in MB of an ONNX file with its external data (``NAME.data`` beside it), if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.is_file() else 0)) / 1e6


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write atomically; weights go to external data above 2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        if over_2gb(model):
            onnx.save(model, tmp, save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_onnx(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning every failure into a one-line UserError.

    `external_data=False`: the graph alone, for a reader that needs no weights (metadata, node types); weights
    kept in an external data file stay there, and the checker reads them from disk.
    """
    path = check_onnx_file(path)
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # noqa: BLE001  (onnx raises many types: DecodeError, OSError, ValueError...)
        raise UserError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    check_onnx(model, path)
    return model


def check_onnx_file(path: str | Path) -> Path:
    """What `load_onnx` checks before parsing: `path` is a readable, non-empty file protobuf can hold."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the .onnx file inside it")
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{path}: cannot read the ONNX file ({exc.strerror or exc})") from None
    if size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not an ONNX model; export it again")
    if size >= TWO_GB:
        raise UserError(f"{path}: {size / 2**30:.1f} GB in one file; protobuf cannot read an ONNX file of 2 GB or "
                        "more: save it with its weights as external data "
                        "(onnx.save(model, path, save_as_external_data=True))")
    return path


def check_onnx(model: onnx.ModelProto, path: Path) -> None:
    """What `load_onnx` checks after parsing `path` into `model`: versions this onnx knows, the checker, outputs."""
    _check_versions(model, path)
    try:
        if over_2gb(model) or has_external_data(model):  # weights on disk: the checker must read them there
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001  (ValidationError, and OSError/ValueError for external data)
        raise UserError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    if not model.graph.output:
        raise UserError(f"{path}: the graph has no outputs, so there is nothing to run; export it again with outputs")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {(lines[0] if lines else 'no details')[:200]}"


def _check_versions(model: onnx.ModelProto, path: Path) -> None:
    """Refuse IR versions and default-domain opsets newer than the installed onnx package knows."""
    if model.ir_version > onnx.IR_VERSION:
        raise UserError(f"{path}: ONNX IR version {model.ir_version} is newer than the installed onnx "
                        f"{onnx.__version__} reads (up to {onnx.IR_VERSION}); upgrade onnx or re-export "
                        "with an older exporter")
    supported = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > supported:
            raise UserError(f"{path}: opset {opset.version} is newer than the installed onnx {onnx.__version__} "
                            f"supports (up to {supported}); re-export with opset <= {supported} or upgrade onnx")
