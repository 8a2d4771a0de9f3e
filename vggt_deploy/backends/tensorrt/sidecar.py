"""Engine sidecars: what an engine was built with, and the refusal of a mismatched one.

A TensorRT engine only runs on the TensorRT version and GPU (compute
capability) it was built for; loading it elsewhere fails late and obscurely.
Every engine is written with `<engine>.json` beside it, and the runner checks
it against the running TensorRT and GPU before deserializing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_bytes, atomic_write_text

REQUIRED = ("tensorrt", "gpu", "compute_capability", "onnx_sha256", "plan_hash", "build")


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def onnx_sha256(onnx_file: Path) -> str:
    """sha256 of an ONNX file and, where it has one, of its external data file (``NAME.data``), streamed."""
    digest = hashlib.sha256()
    for path in (onnx_file, onnx_file.with_name(onnx_file.name + ".data")):
        if path.is_file():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def make_sidecar(trt_version: str, gpu: str, compute_capability: str, onnx_file: Path, plan_hash: str,
                 build: dict) -> dict:
    return {"tensorrt": trt_version, "gpu": gpu, "compute_capability": compute_capability,
            "onnx": str(onnx_file), "onnx_sha256": onnx_sha256(onnx_file),
            "plan_hash": plan_hash, "build": build}


def write_engine(engine: Path, blob: bytes, sidecar: dict) -> None:
    """Engine and sidecar, each via a temporary file and rename (sidecar last: its presence marks a complete build)."""
    atomic_write_bytes(engine, blob)
    atomic_write_text(sidecar_path(engine), json.dumps(sidecar, indent=1) + "\n")


def read_sidecar(engine: Path) -> dict:
    side = sidecar_path(engine)
    if not engine.is_file():
        raise UserError(f"{engine}: engine file not found")
    if not side.is_file():
        raise UserError(f"{side}: sidecar missing; rebuild the engine with `vggt-deploy build-trt`")
    try:
        data = json.loads(side.read_text())
    except ValueError as exc:
        raise UserError(f"{side}: not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{side}: missing field(s) {missing}; rebuild the engine")
    return data


def check_sidecar(engine: Path, sidecar: dict, trt_version: str, gpu: str, compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT or GPU, naming every difference."""
    problems = []
    if sidecar["tensorrt"] != trt_version:
        problems.append(f"built with TensorRT {sidecar['tensorrt']}, running {trt_version}")
    if sidecar["compute_capability"] != compute_capability:
        problems.append(f"built for compute capability {sidecar['compute_capability']} ({sidecar['gpu']}), "
                        f"this GPU is {compute_capability} ({gpu})")
    if problems:
        raise UserError(f"{engine}: " + "; ".join(problems) +
                        ". Engines are not portable across TensorRT versions or GPUs: rebuild it here with `vggt-deploy build-trt`")
