"""build-ov folders: what a folder holds, what it was built with, and the refusal of a mismatched one.

A build-ov folder is `model.xml` + `model.bin` (OpenVINO IR), `cache/` (compiled blobs for the
batch sizes it was built for) and `model.json` (the sidecar). The cached blobs and the bf16
choice belong to the OpenVINO version and the CPU that made them, and the IR to the ONNX it
came from; the runner checks all three before loading, as the TensorRT runner does for engines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import sha256_file

SIDECAR = "model.json"
IR_FILES = ("model.xml", "model.bin")
CACHE = "cache"
REQUIRED = ("openvino", "cpu", "cpu_flags", "precision", "options", "source", "source_sha256")
# ONNX metadata the export wrote -> sidecar field (the plan's layer precisions are JSON)
METADATA_FIELDS = {"vggt.model": "model", "vggt.config_hash": "config_hash", "vggt.plan_hash": "plan_hash",
                   "vggt.target": "target", "vggt.layer_precisions": "layer_precisions"}


def metadata_fields(meta: dict[str, str]) -> dict:
    """The sidecar fields copied from the source ONNX's metadata, where present."""
    out: dict = {}
    for key, field in METADATA_FIELDS.items():
        if key in meta:
            value = meta[key]
            if field == "layer_precisions":
                try:
                    value = json.loads(value)
                except ValueError:
                    continue
            out[field] = value
    return out


def previous_build(folder: Path) -> set[str]:
    """The entries of an earlier build-ov output in `folder` (by its sidecar), else nothing."""
    try:
        data = json.loads((Path(folder) / SIDECAR).read_text())
        if not isinstance(data, dict) or "openvino" not in data:
            return set()
    except (OSError, ValueError):
        return set()
    known = {SIDECAR, *IR_FILES, CACHE}
    for root, dirs, names in os.walk(Path(folder) / CACHE):
        rel = Path(root).relative_to(folder)
        known |= {(rel / n).as_posix() for n in dirs + names}
    return known


def read_sidecar(folder: Path) -> dict:
    folder = Path(folder)
    side = folder / SIDECAR
    if not side.is_file():
        raise UserError(f"{folder}: no {SIDECAR}; give an .onnx/.xml file or a folder written by "
                        "`vggt-deploy build-ov`")
    missing_files = [n for n in IR_FILES if not (folder / n).is_file()]
    if missing_files:
        raise UserError(f"{folder}: {', '.join(missing_files)} missing; rebuild it with `vggt-deploy build-ov`")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{side}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{side}: not a build-ov sidecar (a JSON object expected)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{side}: missing field(s) {missing}; rebuild it with `vggt-deploy build-ov`")
    return data


def check_sidecar(folder: Path, sidecar: dict, ov_version: str, cpu: str, flags: list[str]) -> None:
    """Refuse a folder built by another OpenVINO, on another CPU, or from an ONNX that has changed since."""
    problems = []
    if sidecar["openvino"] != ov_version:
        problems.append(f"built with OpenVINO {sidecar['openvino']}, running {ov_version}")
    if sidecar["cpu"] != cpu:
        problems.append(f"built on CPU {sidecar['cpu']!r}, this is {cpu!r}")
    built_flags = set(sidecar["cpu_flags"] or [])
    if built_flags != set(flags):
        only_there = sorted(built_flags - set(flags))
        only_here = sorted(set(flags) - built_flags)
        detail = "; ".join(p for p in (f"missing here: {' '.join(only_there)}" if only_there else "",
                                       f"new here: {' '.join(only_here)}" if only_here else "") if p)
        problems.append(f"CPU flags differ ({detail})")
    source = Path(sidecar["source"])
    if source.is_file() and sha256_file(source) != sidecar["source_sha256"]:  # gone (a deployed folder) is fine
        problems.append(f"its source {source} has changed since the build (sha256 differs)")
    if problems:
        raise UserError(f"{folder}: " + "; ".join(problems) +
                        f". Rebuild it here with `vggt-deploy build-ov --onnx {source} -o {folder}`")
