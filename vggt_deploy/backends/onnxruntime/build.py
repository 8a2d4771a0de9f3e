"""`vggt-deploy build-ort`: optimize an ONNX model offline for ONNX Runtime on the CPU.

ONNX Runtime re-optimizes a model every time a session is created; on an edge
box that costs start-up time. Building once saves the optimized graph (as
ONNX, or in the ORT format that minimal ONNX Runtime builds load) with a
sidecar JSON of the settings it was built with, so the box loads it as is.

Optimization levels follow ONNX Runtime's: `extended` is portable across CPUs;
`all` adds layout transformations specific to the building machine's CPU, so
build on the deployment box itself when using it. `--fusions` first runs
ONNX Runtime's transformer optimizer (attention/LayerNorm/GELU fusions) and
reports what it fused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vggt_deploy.backends.onnxruntime.session import import_ort, session_options
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_text

LEVELS = ("basic", "extended", "all")


def _transformer_fusions(src: Path, dst: Path, num_heads: int, hidden: int) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(str(dst))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def build_ort(onnx_file: Path, out: Path, level: str = "extended", fmt: str = "onnx", fusions: bool = False,
              threads: int | None = None) -> dict:
    """Write the optimized model to `out` (atomically) and `out`.json with its settings; returns them."""
    ort = import_ort()
    from vggt_deploy.graph.onnx_io import get_metadata, load_onnx

    if level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}")
    model = load_onnx(onnx_file)
    meta = get_metadata(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = onnx_file
    fused: dict = {}
    tmp_fused = out.with_name(f".{out.stem}.fused.onnx")
    if fusions:
        heads = int(meta.get("vggt.num_heads", "0")) or 4
        hidden = int(meta.get("vggt.embed_dim", "0")) or 256
        fused = _transformer_fusions(onnx_file, tmp_fused, heads, hidden)
        source = tmp_fused
    opts = session_options(threads)
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    tmp = out.with_name(f".{out.name}.tmp")
    opts.optimized_model_filepath = str(tmp)
    if fmt == "ort":
        opts.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(source), sess_options=opts, providers=["CPUExecutionProvider"])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_fused.unlink(missing_ok=True)
    settings = {
        "source": str(onnx_file), "source_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "onnxruntime": ort.__version__, "optimization_level": level, "format": fmt, "transformer_fusions": fused,
        "session": {"intra_op_num_threads": threads, "allow_spinning": False,
                    "graph_optimization_level": "disable (already optimized)"},
        "portable": level != "all",
    }
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(settings, indent=1) + "\n")
    return settings
