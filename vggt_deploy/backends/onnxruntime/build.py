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
from pathlib import Path

from vggt_deploy.backends.onnxruntime.session import create_session, import_ort, session_options
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_text
from vggt_deploy.outputs import OutputFolder, check_output_path

LEVELS = ("basic", "extended", "all")


def _transformer_fusions(src: Path, dst: Path, num_heads: int, hidden: int) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(str(dst))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def build_ort(onnx_file: Path, out: Path, level: str = "extended", fmt: str = "onnx", fusions: bool = False,
              threads: int | None = None) -> dict:
    """Write the optimized model to `out` and `out`.json with its settings (together); returns the settings."""
    out = Path(out)
    sidecar = out.name + ".json"
    check_output_path(out, [onnx_file], files=[sidecar])
    ort = import_ort()
    from vggt_deploy.graph.onnx_io import get_metadata, load_onnx

    if level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}")
    model = load_onnx(onnx_file)
    meta = get_metadata(model)
    opts = session_options(threads)
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if fmt == "ort":
        opts.add_session_config_entry("session.save_model_format", "ORT")
    with OutputFolder(out.parent) as tmp:  # the model and its sidecar appear together or not at all
        source = onnx_file
        fused: dict = {}
        tmp_fused = tmp / ".fused.onnx"
        if fusions:
            heads = int(meta.get("vggt.num_heads", "0")) or 4
            hidden = int(meta.get("vggt.embed_dim", "0")) or 256
            fused = _transformer_fusions(onnx_file, tmp_fused, heads, hidden)
            source = tmp_fused
        opts.optimized_model_filepath = str(tmp / out.name)
        create_session(source if source == onnx_file else str(source), opts, ["CPUExecutionProvider"])
        tmp_fused.unlink(missing_ok=True)
        settings = {
            "source": str(onnx_file), "source_sha256": hashlib.sha256(Path(onnx_file).read_bytes()).hexdigest(),
            "onnxruntime": ort.__version__, "optimization_level": level, "format": fmt, "transformer_fusions": fused,
            "session": {"intra_op_num_threads": threads, "allow_spinning": False,
                        "graph_optimization_level": "disable (already optimized)"},
            "portable": level != "all",
        }
        atomic_write_text(tmp / sidecar, json.dumps(settings, indent=1) + "\n")
    return settings
