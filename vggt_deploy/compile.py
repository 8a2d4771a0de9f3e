"""`vggt-deploy export`: model folder or ONNX file -> FP32 ONNX (+ QDQ ONNX and report from a plan).

Outputs in OUTDIR:

    model.onnx        FP32, checked against PyTorch, metadata of DESIGN.md
    queries.npy/json  category query embeddings (precomputed; the image graph takes them as input)
    export.json       what the export measured (ORT vs PyTorch max abs difference, opset, sizes)
    model.qdq.onnx    with --plan: the calibrated QDQ model for the plan's target
    report.json       with --plan: every layer's precision/granularity, calibration, range summary

The files are written into a temporary folder and moved into OUTDIR
together, so a failure (Ctrl-C included) leaves no file of the set and no
half-written one; other files in OUTDIR are left alone. An OUTDIR that is, or
holds, an input (the model folder, the --onnx file, the plan) is refused before
any work.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError
from vggt_deploy.export.onnx_export import OPSET, export_model
from vggt_deploy.fileio import atomic_write_bytes, atomic_write_json
from vggt_deploy.graph.onnx_io import load_onnx, onnx_size_mb, save_onnx, set_metadata
from vggt_deploy.outputs import OutputFolder, check_output_path
from vggt_deploy.paths import calibration_cache_dir
from vggt_deploy.quant.calibrate import calibration_tensors
from vggt_deploy.quant.plan import QdqPlan
from vggt_deploy.quant.qat_folder import learned_ranges
from vggt_deploy.quant.resolved import ResolvedPlan, resolve_plan

OUTPUT_FILES = ("model.onnx", "queries.npy", "queries.json", "export.json", "model.qdq.onnx", "report.json")
QDQ_FILES = ("model.qdq.onnx", "report.json")
# VGGT-1B: no query files; above 2 GB the weights go to external data beside each graph.
VGGT1B_FILES = ("model.onnx", "model.onnx.data", "export.json", "model.qdq.onnx", "model.qdq.onnx.data", "report.json")


@dataclass
class ExportOutputs:
    fp32: Path
    qdq: Path | None
    report: dict | None
    export_info: dict


def _check_out(out_dir: Path, inputs: list[Path | None], plan: QdqPlan | None) -> None:
    plan_file = Path(plan.source) if plan is not None and Path(plan.source).is_file() else None
    check_output_path(out_dir, [*inputs, plan_file], folder=True, files=OUTPUT_FILES)


def _output_folder(out_dir: Path, writes: tuple[str, ...]) -> OutputFolder:
    """The set this export writes; an earlier export's other files in `out_dir` no longer belong with it."""
    earlier = (out_dir / "export.json").is_file()
    ours = dict.fromkeys(OUTPUT_FILES + VGGT1B_FILES)
    return OutputFolder(out_dir, stale=[n for n in ours if n not in writes] if earlier else ())


def export_from_model(model_dir: Path, out_dir: Path, plan: QdqPlan | None = None, cache_dir: Path | None = None) -> ExportOutputs:
    """Export the model in `model_dir`; quantize with `plan` when given."""
    from vggt_deploy.data.vocabulary import category_names
    from vggt_deploy.model.io import load_model
    from vggt_deploy.model.queries import query_embeddings

    out_dir = Path(out_dir)
    _check_out(out_dir, [Path(model_dir)], plan)
    loaded = load_model(model_dir)
    pp = loaded.model.cfg.preprocess
    calib_spec = plan.calibration if plan else None
    if calib_spec is not None:
        calib = calibration_tensors(calib_spec, pp)
    else:
        from vggt_deploy.quant.plan import CalibrationSpec

        calib = calibration_tensors(CalibrationSpec(num_images=2), pp)
    texts = category_names()
    queries = query_embeddings(loaded, texts)
    fp32, check = export_model(loaded, calib[:2], queries)
    # Resolved once; a plan written for another model fails here, before any file is written.
    resolved = resolve_plan(plan, fp32) if plan is not None else None
    writes = OUTPUT_FILES if plan is not None else OUTPUT_FILES[:4]
    with _output_folder(out_dir, writes) as tmp:
        fp32_size = save_onnx(fp32, tmp / "model.onnx").stat().st_size
        _save_queries(tmp, texts, queries)
        info = {"model": str(model_dir), "opset": OPSET, "max_abs_diff_vs_torch": check.max_abs_diff,
                "tolerance_boxes": check.tolerance, "fp32_size_mb": fp32_size / 1e6,
                "num_nodes": len(fp32.graph.node)}
        qdq_path, report = None, None
        if plan is not None:
            qdq_path, report = _quantize(fp32, resolved, calib, {"query_embeds": queries}, "images", tmp, cache_dir,
                                         learned_ranges(Path(model_dir), resolved, fp32))
            info["qdq_size_mb"] = qdq_path.stat().st_size / 1e6
        atomic_write_json(tmp / "export.json", info)
    return ExportOutputs(out_dir / "model.onnx", out_dir / "model.qdq.onnx" if plan is not None else None, report, info)


EVAL_IMAGES_MAX = 64  # held-out images for the agreement check of a foreign model


def export_from_onnx(onnx_file: Path, out_dir: Path, plan: QdqPlan, cache_dir: Path | None = None,
                     eval_images: Path | None = None) -> ExportOutputs:
    """Quantize a model exported elsewhere; its input preprocessing comes from the plan.

    The tool cannot know a foreign model's task metric, so with `eval_images` (a folder of
    held-out images, up to `EVAL_IMAGES_MAX` used) the report gets the QDQ model's agreement
    with FP32 per output (`report["agreement"]`: cosine, Pearson r mean and worst image,
    relative L2, max abs; see `quant/compare.output_agreement`).
    """
    out_dir = Path(out_dir)
    _check_out(out_dir, [Path(onnx_file)], plan)
    model = load_onnx(onnx_file)
    name, pp = foreign_image_input(model, plan, onnx_file)
    resolved = resolve_plan(plan, model)
    calib = calibration_tensors(plan.calibration, pp)
    held_out = None
    if eval_images is not None:  # read before any work is written: a bad folder fails first
        from vggt_deploy.quant.compare_inputs import load_images

        held_out = load_images(eval_images, EVAL_IMAGES_MAX, pp, plan.calibration.input.channel_order)
    with _output_folder(out_dir, ("export.json", *QDQ_FILES)) as tmp:
        qdq_path, report = _quantize(model, resolved, calib, {}, name, tmp, cache_dir)
        if held_out is not None:
            from vggt_deploy.quant.compare import output_agreement

            report["agreement"] = {"images": str(eval_images), "num_images": len(held_out),
                                   "outputs": output_agreement(model, load_onnx(qdq_path), held_out, name)}
            atomic_write_json(tmp / "report.json", report)
        info = {"onnx": str(onnx_file), "qdq_size_mb": qdq_path.stat().st_size / 1e6}
        atomic_write_json(tmp / "export.json", info)
    return ExportOutputs(Path(onnx_file), out_dir / "model.qdq.onnx", report, info)


def foreign_image_input(model: onnx.ModelProto, plan: QdqPlan, onnx_file: Path) -> tuple[str, PreprocessConfig]:
    """The image input's name and preprocessing of a model exported elsewhere (from the plan's
    `calibration.input`), checked against the graph: one input only, of a known square size.

    Also records the preprocessing in `model`'s `vggt.preprocess` metadata, as its QDQ model carries it
    (the range cache is keyed by the model's bytes, so every command that quantizes it shares ranges).
    """
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    spec = plan.calibration.input
    name = spec.name or (graph_inputs[0].name if len(graph_inputs) == 1 else None)
    if name is None or name not in {i.name for i in graph_inputs}:
        names = ", ".join(i.name for i in graph_inputs)
        raise UserError(f"{plan.source}: calibration.input.name must name the image input of {onnx_file} (inputs: {names})")
    others = [i.name for i in graph_inputs if i.name != name]
    if others:
        raise UserError(f"{onnx_file}: inputs {others} besides {name!r} need calibration feeds; "
                        "export such models with `vggt-deploy export --model` or supply a single-input model")
    size = spec.size or _static_side(model, name, onnx_file)
    set_metadata(model, {"vggt.preprocess": json.dumps({"size": size, "mean": list(spec.mean), "std": list(spec.std),
                                                        "channel_order": spec.channel_order, "layout": "NCHW"})})
    return name, PreprocessConfig(size=size, mean=spec.mean, std=spec.std)


def _static_side(model: onnx.ModelProto, name: str, path: Path) -> int:
    inp = next(i for i in model.graph.input if i.name == name)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[2] or dims[2] != dims[3]:
        raise UserError(f"{path}: input {name!r} has no fixed square size; set calibration.input.size in the plan")
    return dims[2]


def export_vggt1b_model(config: str, out_dir: Path, image_hw: tuple[int, int], plan: QdqPlan | None = None,
                        weights: Path | None = None, frames: int = 2, cache_dir: Path | None = None,
                        stream: bool | None = None) -> ExportOutputs:
    """Meta's VGGT-1B (the port; `weights` the public checkpoint, else random) -> FP32 ONNX (+ QDQ with `plan`).

    The FP32 graph takes ``images`` [S, 3, H, W] with S dynamic (`export.vggt1b_export`). Calibration
    feeds whole sequences of `frames` frames from the multi-view calibration split (``num_images`` of the
    plan's calibration section is the number of sequences), so global attention sees several frames as
    in use. Files above 2 GB are written with external data (``*.onnx.data``) beside them; a model whose
    weights reach 2 GB (or `stream`) is exported streamed (`_export_vggt1b_streamed`).
    """
    import torch

    from vggt_deploy.data.multiview import MultiViewConfig, sequence_tensor, split_sequences
    from vggt_deploy.export.vggt1b_export import export_vggt1b, is_large
    from vggt_deploy.fileio import sha256_file
    from vggt_deploy.model.vggt1b.io import create_vggt1b, load_vggt1b_weights

    out_dir = Path(out_dir)
    _check_out(out_dir, [weights], plan)
    if plan is not None and plan.calibration.input.npy_dir is not None:
        raise UserError(f"{plan.source}: calibration.input does not apply to VGGT-1B, which calibrates on "
                        "multi-view sequences (its input is frames in [0, 1])")
    height, width = image_hw
    with torch.device("meta"):
        shape = create_vggt1b(config)  # sizes only: no memory, no weights
    large = stream if stream is not None else is_large(shape)
    if plan is not None and large:
        _check_memory_for_quantizing(shape, config)  # before the weights are read or anything is traced
    del shape
    sha = sha256_file(weights) if weights is not None else ""
    check = sequence_tensor(split_sequences("eval", 1, MultiViewConfig(height, width, frames + 1))[0])
    calib = None
    if plan is not None:
        seqs = split_sequences("calib", plan.calibration.num_images, MultiViewConfig(height, width, frames))
        calib = np.stack([sequence_tensor(s) for s in seqs])
    if large:
        return _export_vggt1b_streamed(config, out_dir, (height, width), weights, sha, [check[:frames], check],
                                       plan, calib, cache_dir)
    model = create_vggt1b(config)
    if weights is not None:
        load_vggt1b_weights(model, weights)
    fp32, info = export_vggt1b(model, [check[:frames], check], sha)
    del model  # the graph holds the weights now; at full size that is 5 GB less
    resolved = resolve_plan(plan, fp32) if plan is not None else None
    writes = VGGT1B_FILES if plan is not None else VGGT1B_FILES[:3]
    with _output_folder(out_dir, writes) as tmp:
        info.update(config=config, weights=str(weights) if weights else "random (untrained)", opset=OPSET,
                    image_hw=[height, width], fp32_size_mb=onnx_size_mb(save_onnx(fp32, tmp / "model.onnx")))
        if plan is not None:
            qdq_path, _ = _quantize(fp32, resolved, calib, {}, "images", tmp, cache_dir)
            info["qdq_size_mb"] = onnx_size_mb(qdq_path)
            info["calibration"] = f"{len(calib)} multi-view sequences of {frames} frames (synthetic calib split)"
        atomic_write_json(tmp / "export.json", info)
    return ExportOutputs(out_dir / "model.onnx", out_dir / "model.qdq.onnx" if plan is not None else None, None, info)


QUANTIZE_MEMORY_FACTOR = 3  # peak memory / weight bytes when exporting and quantizing a streamed model (measured 2.45x)


def _check_memory_for_quantizing(model, config: str) -> None:
    """Refuse, before any work, to quantize a model whose calibration and quantization cannot fit in memory.

    The export (a child process) holds the PyTorch model beside the exporter's copy; calibration holds
    an ONNX Runtime session beside one pass of activations; ONNX Runtime's quantizer holds the FP32 and
    the int8 weights. VGGT-1B (4.8 GB of weights) peaks at 11.8 GB; a machine with
    QUANTIZE_MEMORY_FACTOR times the weights available goes ahead.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need = QUANTIZE_MEMORY_FACTOR * weights
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(next(l for l in meminfo.splitlines() if l.startswith("MemAvailable:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return  # not Linux: cannot tell, so try
    if available < need:
        raise UserError(f"{config}: quantizing needs about {need / 2**30:.0f} GiB of memory ({QUANTIZE_MEMORY_FACTOR}x its "
                        f"{weights / 2**30:.1f} GiB of weights) and {available / 2**30:.0f} GiB is available; export "
                        "the FP32 graph without --plan here, or quantize on a larger machine")


def _export_vggt1b_streamed(config: str, out_dir: Path, image_hw: tuple[int, int], weights: Path | None,
                            sha: str, check: list[np.ndarray], plan: QdqPlan | None, calib: np.ndarray | None,
                            cache_dir: Path | None) -> ExportOutputs:
    """The export of a model above 2 GB: weights streamed to external data by a child process
    (`export_vggt1b_file_in_child`, whose memory all returns when it ends), then calibrated and
    quantized from the file (`quantize` with the graph alone), so no step holds more than two copies
    of the weights: ONNX Runtime's session or quantizer, and the quantized result."""
    from vggt_deploy.export.vggt1b_export import export_vggt1b_file_in_child

    writes = VGGT1B_FILES if plan is not None else VGGT1B_FILES[:3]
    with _output_folder(out_dir, writes) as tmp:
        fp32_path = tmp / "model.onnx"
        info = export_vggt1b_file_in_child(config, weights, sha, check, fp32_path)
        info.update(config=config, weights=str(weights) if weights else "random (untrained)", opset=OPSET,
                    image_hw=list(image_hw), fp32_size_mb=onnx_size_mb(fp32_path))
        if plan is not None:
            fp32 = onnx.load(str(fp32_path), load_external_data=False)  # the graph: weights stay in the file
            resolved = resolve_plan(plan, fp32)
            qdq_path, _ = _quantize(fp32, resolved, calib, {}, "images", tmp, cache_dir, fp32_path=fp32_path)
            del fp32
            info["qdq_size_mb"] = onnx_size_mb(qdq_path)
            info["calibration"] = f"{len(calib)} multi-view sequences of {check[0].shape[0]} frames (synthetic calib split)"
        atomic_write_json(tmp / "export.json", info)
    return ExportOutputs(out_dir / "model.onnx", out_dir / "model.qdq.onnx" if plan is not None else None, None, info)


def _quantize(fp32, resolved: ResolvedPlan, calib, feeds, image_input, out_dir, cache_dir, fixed_ranges=None,
              fp32_path: Path | None = None):
    from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
    from vggt_deploy.quant.qdq import quantize

    result = quantize(fp32, resolved, calib, feeds, image_input, cache_dir or calibration_cache_dir(), fixed_ranges,
                      fp32_path)
    if resolved.plan.target == "tensorrt":
        violations = validate_tensorrt(result.model)
        if violations:
            raise RuntimeError("TensorRT-flavour QDQ model breaks TensorRT rules:\n  " + "\n  ".join(violations))
        result.report["tensorrt_validation"] = "passed"
    qdq_path = save_onnx(result.model, out_dir / "model.qdq.onnx")
    atomic_write_json(out_dir / "report.json", result.report)
    return qdq_path, result.report


def _save_queries(out_dir: Path, texts: list[str], queries: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, queries.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(out_dir / "queries.npy", buf.getvalue())
    atomic_write_json(out_dir / "queries.json", {"texts": texts})
