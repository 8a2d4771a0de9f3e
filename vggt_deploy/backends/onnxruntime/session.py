"""ONNX Runtime CPU sessions, configured the same way everywhere.

onnxruntime is imported here, not at package import, so `import vggt_deploy`
stays light and a missing install gives one line saying what to install.
Thread pools do not spin: spinning threads steal cores from whatever else is
being measured or run in the same process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vggt_deploy.errors import UserError


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int | None = None, optimize: bool = True, weights_dir: Path | None = None) -> Any:
    """Session options; `weights_dir` is where a model given as bytes finds its external data (a graph read
    with ``load_external_data=False``), so a model above 2 GB is never held whole outside the session."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if weights_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_dir))
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return opts


def make_session(model: bytes | str | Path, threads: int | None = None, optimize: bool = True,
                 weights_dir: Path | None = None) -> Any:
    """A CPU InferenceSession from a path or serialized bytes; load failures are UserErrors."""
    return create_session(model, session_options(threads, optimize, weights_dir), ["CPUExecutionProvider"])


def create_session(model: bytes | str | Path, options: Any, providers: list[str]) -> Any:
    """`onnxruntime.InferenceSession`, with every load failure as one UserError naming the file.

    ONNX Runtime refuses models it cannot run (an op of a custom domain without its library, an
    opset it does not know, an op without a kernel) with its own exception types.
    """
    ort = import_ort()
    source = model if isinstance(model, bytes) else str(model)
    name = "<in-memory model>" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except ort_errors() as exc:
        raise UserError(f"{name}: ONNX Runtime cannot load it ({ort_reason(exc)})") from None


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises (Fail, InvalidGraph, NotImplemented, ...), plus RuntimeError."""
    import_ort()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (RuntimeError, *found)


_ORT_NOISE = (
    re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*"),  # [ONNXRuntimeError] : 1 : FAIL :
    re.compile(r"^Load model from .*? failed:\s*"),
    re.compile(r"^(Fatal error:\s*)"),
    re.compile(r"^/\S+:\d+ .*?\) "),  # C++ source location and function signature
)


def ort_reason(exc: BaseException) -> str:
    """The first line of ONNX Runtime's message, without its status prefix and C++ source location."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else exc.__class__.__name__
    for pattern in _ORT_NOISE:
        text = pattern.sub("", text, count=1)
    return text.strip()[:240] or exc.__class__.__name__
