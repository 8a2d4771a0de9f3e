"""ONNX Runtime CPU sessions, configured the same way everywhere.

onnxruntime is imported here, not at package import, so `import vggt_deploy`
stays light and a missing install gives one line saying what to install.
Thread pools do not spin: spinning threads steal cores from whatever else is
being measured or run in the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggt_deploy.errors import UserError


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int | None = None, optimize: bool = True) -> Any:
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return opts


def make_session(model: bytes | str | Path, threads: int | None = None, optimize: bool = True) -> Any:
    """A CPU InferenceSession from a path or serialized bytes; load failures are UserErrors."""
    ort = import_ort()
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads, optimize),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        name = "<in-memory model>" if isinstance(model, bytes) else str(model)
        raise UserError(f"{name}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
