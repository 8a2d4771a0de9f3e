"""`vggt-deploy build-ov`: an OpenVINO IR folder, compiled ahead of time for this CPU.

The QDQ ONNX the exporter writes is read by OpenVINO as is (QDQ pairs become int8 kernels)
and saved as IR with `compress_to_fp16`: an FP32 model's float constants are stored as fp16
on disk (half the file; the CPU computes in f32/bf16 regardless), while for a quantized (QDQ)
model OpenVINO leaves every constant as it was (int8 weights int8, float layers fp32; measured:
the vggt_small mixed IR is the QDQ ONNX's size, the FP32 IR half the FP32 ONNX's). The IR is then
compiled once per batch size into the folder's `cache/`, so the runner on the box starts from
the cached blobs. OpenVINO keys cached blobs by the model's content and the compile config when
the model is given as an object (as the runner does), not by its path, so the cache stays
valid when the staging folder is renamed into place. Unless told not to, the file is lowered
first (lowering.py: a QDQ file's activation zero points folded, the same grid on a faster int8
path; then the exact rewrites of rewrites.py, fewer nodes), so the IR holds the lowered graph. The
rewrites that pay off at batch 1 only (`heads_first`) go in when the folder is compiled for batch 1
alone; the IR then still runs other batch sizes, only not as fast as one built for them.
`model.json` records the OpenVINO
version, the CPU and its flags, the options, the source ONNX and its sha256, and the plan
facts the QDQ export wrote; the runner refuses the folder when any of the first three differ.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vggt_deploy.backends.openvino.loader import (
    check_precision,
    cpu_flags,
    cpu_name,
    default_precision,
    import_openvino,
    ov_errors,
    ov_reason,
    read_model,
)
from vggt_deploy.backends.openvino.runner import (
    batch_input,
    compile_on_cpu,
    input_names,
    read_for_cpu,
    reshaped,
    set_cache,
)
from vggt_deploy.backends.openvino.settings import OvOptions, compile_config
from vggt_deploy.backends.openvino.sidecar import (
    CACHE,
    IR_FILES,
    SIDECAR,
    metadata_fields,
    previous_build,
)
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_json, sha256_file
from vggt_deploy.outputs import OutputFolder, check_output_path


def default_num_queries() -> int:
    """Rows of query_embeds that eval and bench feed: one per category."""
    from vggt_deploy.data.vocabulary import category_names

    return len(category_names())


def static_shapes_for(model: Any, batch: int, num_queries: int) -> dict[str, tuple[int, ...]]:
    """Every input's shape at `batch` images: `images` (else the first input) takes the batch,
    `query_embeds` takes `num_queries` rows; any other dynamic dim cannot be guessed."""
    names = input_names(model)
    batched = batch_input(names)
    shapes = {}
    for name, port in zip(names, model.inputs):
        dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        if dims and dims[0] is None:
            dims[0] = batch if name == batched else num_queries if name == "query_embeds" else None
        if any(d is None for d in dims):
            raise UserError(f"input {name!r} has dynamic dims {port.get_partial_shape()} that build-ov cannot fix; "
                            "use --dynamic-shapes")
        shapes[name] = tuple(dims)
    return shapes


def _ir_size_mb(folder: Path) -> float:
    return sum((folder / n).stat().st_size for n in IR_FILES) / 1e6


def build_ov(onnx_file: Path, out_dir: Path, options: OvOptions, batch_sizes: tuple[int, ...] = (1,),
             num_queries: int | None = None) -> dict:
    """Write `out_dir` (model.xml, model.bin, cache/, model.json) all together; returns the sidecar.

    Args:
        onnx_file: FP32 or QDQ ONNX (as `vggt-deploy export` writes it).
        options: precision (None: bf16 where the CPU has it natively), hint, threads, streams, static shapes.
        batch_sizes: image batch sizes to compile ahead (static shapes); the runner compiles others on demand.
        num_queries: rows of query_embeds to compile for (default: the category count that eval feeds).
    """
    onnx_file, out_dir = Path(onnx_file), Path(out_dir)
    check_output_path(out_dir, [onnx_file], folder=True, files=(*IR_FILES, SIDECAR))
    batch_sizes = tuple(dict.fromkeys(batch_sizes))
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise UserError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if num_queries is not None and num_queries < 1:
        raise UserError(f"the number of queries must be positive, got {num_queries}")
    ov = import_openvino()
    from vggt_deploy.graph.onnx_io import get_metadata, load_onnx

    # A broken file is one error line, before OpenVINO sees it; external weights stay on disk (OpenVINO reads them).
    meta = get_metadata(load_onnx(onnx_file, external_data=False))
    precision = options.precision or default_precision()
    check_precision(precision)
    config = compile_config(options, precision)
    core = ov.Core()
    # One IR serves every batch size the folder is compiled for: the batch-1-only rewrites need batch 1 alone.
    single = options.static_shapes and batch_sizes == (1,)
    model, lowering = read_for_cpu(core, onnx_file, options.fold_zero_points, options.rewrite_graph, single)
    folded = lowering.fold if lowering else None
    rewrites = lowering.rewrites if lowering else None
    queries = num_queries or default_num_queries()
    with OutputFolder(out_dir, replaces=previous_build(out_dir)) as tmp:
        try:
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=True)
        except ov_errors() as exc:
            raise UserError(f"{onnx_file}: OpenVINO cannot save it as IR ({ov_reason(exc)})") from None
        # Compile what the runner will compile: the saved IR, reshaped the same way, with the same config.
        set_cache(core, tmp / CACHE, required=True)
        saved = read_model(core, tmp / "model.xml")
        compile_ms: dict[str, float] = {}
        if options.static_shapes:
            for batch in batch_sizes:
                _, ms, _ = compile_on_cpu(core, reshaped(saved, static_shapes_for(saved, batch, queries)), config,
                                          onnx_file)
                compile_ms[str(batch)] = round(ms, 1)
        else:
            _, ms, _ = compile_on_cpu(core, saved, config, onnx_file)
            compile_ms["dynamic"] = round(ms, 1)
        sidecar = {
            "openvino": ov.__version__, "cpu": cpu_name(), "cpu_flags": cpu_flags(), "precision": precision,
            "options": {**options.to_dict(), "precision": precision}, "compile_config": config,
            "source": os.path.abspath(onnx_file), "source_sha256": sha256_file(onnx_file),
            **metadata_fields(meta),
            "batch_sizes": list(batch_sizes) if options.static_shapes else [],
            "num_queries": queries if options.static_shapes else None,
            "compile_ms": compile_ms, "ir_size_mb": round(_ir_size_mb(tmp), 3),
            "zero_points_folded": folded.folded if folded else 0,
            "graph_rewrites": asdict(rewrites) if rewrites else {},
        }
        atomic_write_json(tmp / SIDECAR, sidecar)
    return sidecar
