"""The one capability table: which backend runs which files, where, at which precisions.

The CLI, the build commands and the benchmark all look backends up here, so an
unsupported combination is refused before any work starts, and a precision is
never quietly replaced by another.
"""

from __future__ import annotations

from dataclasses import dataclass

from vggt_deploy.errors import UserError


@dataclass(frozen=True)
class Backend:
    name: str
    suffix: str  # the file the backend runs
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    needs: tuple[str, ...]  # Python packages, imported lazily


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", ".safetensors", ("cpu",), ("fp32", "int8-dynamic"), ("torch",)),
        Backend("onnxruntime", ".onnx", ("cpu",), ("fp32", "int8", "mixed"), ("onnxruntime",)),
        Backend("openvino", ".xml", ("cpu",), ("f32", "bf16", "int8", "mixed"), ("openvino",)),
        Backend("tensorrt", ".engine", ("cuda", "jetson"), ("fp16", "int8", "mixed"), ("tensorrt", "pycuda")),
    )
}

DEVICES = ("cpu", "cuda", "jetson")


def backend_for(name: str, device: str, precision: str) -> Backend:
    """The backend entry, or a UserError saying why the combination cannot run."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if device not in backend.devices:
        raise UserError(f"{name} does not run on {device} (it runs on {', '.join(backend.devices)})")
    if precision not in backend.precisions:
        raise UserError(f"{name} has no {precision} path (it offers {', '.join(backend.precisions)})")
    return backend
