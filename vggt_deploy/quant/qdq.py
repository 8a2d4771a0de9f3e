"""Place QuantizeLinear/DequantizeLinear nodes from a resolved plan, per target flavour.

The plan decides per layer; onnxruntime.quantization does the graph surgery
(`quantize_static` for calibrated QDQ, `quantize_dynamic` for run-time
activation scales). This module only maps plan -> quantizer arguments:

- TensorRT flavour: symmetric int8 everywhere (zero point 0), QDQ on MatMul/
  Gemm/Conv inputs only, weights per-channel on the output-channel axis,
  activations per-tensor.
- ONNX Runtime CPU flavour: U8S8 (uint8 activations, symmetric int8 weights),
  QDQ on MatMul/Gemm/Conv inputs; Softmax, LayerNorm, Concat and residual Adds
  stay float; `dynamic` rules go through quantize_dynamic.

In both, MatMul/Gemm/Conv outputs are not re-quantized (faster and more
accurate on ORT; TensorRT fuses QDQ on inputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import sha256_file
from vggt_deploy.graph.layers import QUANT_OPS, Layer
from vggt_deploy.graph.onnx_io import has_external_data, over_2gb, set_metadata
from vggt_deploy.quant.auto_calib import auto_ranges, read_decisions, token_exclusion, write_cache
from vggt_deploy.quant.calibrate import TensorReader, cache_path, ort_method, precompute_entropy_ranges
from vggt_deploy.quant.float_storage import store_weights_fp16
from vggt_deploy.quant.norm_folding import fold_norms
from vggt_deploy.quant.resolved import ResolvedPlan, resolve_plan
from vggt_deploy.quant.smoothing import smooth


@dataclass
class QuantResult:
    model: onnx.ModelProto
    report: dict


def model_key(model: onnx.ModelProto, weights_dir: Path | None = None) -> bytes:
    """Bytes that identify a model for the range cache: its serialization, or above 2 GB (which protobuf
    cannot serialize in one piece) a digest of the graph without weights and of every weight.

    `weights_dir`: `model` is a graph whose weights are in external data files there (`has_external_data`);
    the digest covers the graph, the references and each file's sha256.
    """
    if weights_dir is None and not over_2gb(model):
        return model.SerializeToString()
    digest = hashlib.sha256()
    for part in (*model.graph.node, *model.graph.input, *model.graph.output, *model.opset_import,
                 *model.metadata_props, *model.graph.initializer):  # piece by piece: no 2 GB message
        digest.update(part.SerializeToString())
    if weights_dir is not None:
        files = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
        for name in files:
            digest.update(sha256_file(Path(weights_dir) / name).encode())
    return digest.hexdigest().encode()


def weight_axis(model: onnx.ModelProto, layer: Layer) -> int:
    """The output-channel axis of a layer's weight: Conv [O, I, kh, kw] -> 0, MatMul B [K, N] -> 1, Gemm per transB."""
    if layer.op_type == "Conv":
        return 0
    if layer.op_type == "Gemm":
        node = next(n for n in model.graph.node if n.name == layer.node)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def keep_float_consumers(model: onnx.ModelProto) -> int:
    """Rewire every non-MatMul/Gemm/Conv consumer of an activation QDQ pair to the float tensor.

    ONNX Runtime's quantizer shares one Q->DQ pair among all readers of a tensor
    (even with DedicatedQDQPair for some patterns), so a residual Add or a Shape
    reading a LayerNorm output that also feeds a MatMul would see quantization
    noise. Both targets want those ops in float. Returns the number of rewired inputs.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.op_type in QUANT_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # activation pair; weights have no Q node
                node.input[i] = q.input[0]
                rewired += 1
    if rewired:
        _drop_dead_nodes(model)
    return rewired


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nobody reads (QDQ pairs orphaned by rewiring)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence onnxruntime.quantization's advice to run its pre-processing (logged on every call through
    the root logger): the exported graph is already shape-inferred and simplified."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # Its calibrators print progress to stdout, which belongs to `--json` output: send it to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.setLevel(level)


def _check_weight_rewrite(field: str, off: str, source: str, calib_images: np.ndarray | None,
                          weights_dir: Path | None) -> None:
    """A plan field that rewrites FP32 weights from measured activations (`fold_norm`, `smoothing`) needs
    calibration images and weights held in memory."""
    if calib_images is None:
        raise UserError(f"{field} needs calibration images to measure activations (plan calibration.images)")
    if weights_dir is not None:
        raise UserError(f"{source}: {field} rewrites weights in memory, which a model with external "
                        f"weights does not allow here; set {off} for it")


def quantize(
    fp32: onnx.ModelProto,
    resolved: ResolvedPlan,
    calib_images: np.ndarray | None,
    extra_feeds: dict[str, np.ndarray],
    image_input: str,
    cache_dir: Path,
    fixed_ranges: dict[str, tuple[float, float]] | None = None,
    fp32_path: Path | None = None,
) -> QuantResult:
    """The QDQ model of a plan resolved on `fp32` (see `resolve_plan`), plus the report of what was done.

    `fixed_ranges` ({tensor: (lo, hi)}, learned by quantization-aware training) replace
    calibration: they are written to a private range cache, so nothing is recalibrated.
    `fp32_path`, the file `fp32` was read from (external data beside it), lets a model above 2 GB be
    quantized: ONNX Runtime's quantizer reads the file instead of a second copy held in memory. With it,
    `fp32` may be the graph alone (``onnx.load(fp32_path, load_external_data=False)``): calibration then
    reads the weights from the file too, and this process never holds them (VGGT-1B quantizes in
    about 2.5x its weights instead of 5x).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    plan = resolved.plan
    source_model = fp32
    smoothing = None
    weights_dir = fp32_path.parent if fp32_path is not None and has_external_data(fp32) else None
    if weights_dir is not None and plan.calibration.method == "entropy":
        raise UserError(f"{plan.source}: calibration.method entropy holds the whole model in memory, which a model "
                        "with external weights does not allow here; use auto (the default), minmax or percentile")
    # LayerNorm folding and smoothing rewrite the FP32 weights before calibration: the ranges are those of the
    # rewritten graph, and rewritten weights are copies under new names, so the plan is resolved again on it.
    norm_folding, folded = None, frozenset()
    if any(resolved.spec(layer).fold_norm for layer in resolved.layers):
        _check_weight_rewrite("fold_norm", "fold_norm: false", plan.source, calib_images, weights_dir)
        fp32, norm_folding = fold_norms(fp32, resolved, calib_images, image_input, extra_feeds)
        folded = frozenset(row["tensor"] for row in norm_folding["folded"])
        fp32_path, resolved = None, resolve_plan(plan, fp32)  # the file holds the original weights
    if any(resolved.spec(layer).smoothing is not None for layer in resolved.layers):
        _check_weight_rewrite("smoothing", "smoothing: off", plan.source, calib_images, weights_dir)
        fp32, smoothing = smooth(fp32, resolved, calib_images, image_input, extra_feeds, folded)
        fp32_path, resolved = None, resolve_plan(plan, fp32)
    static, dynamic, weight_only = resolved.partition()
    trt = plan.target == "tensorrt"
    ranges_file = cache_path(cache_dir, model_key(fp32, weights_dir), plan.calibration, plan.target)
    cache_hit = ranges_file.is_file()
    model = fp32
    with tempfile.TemporaryDirectory(prefix="vggt-qdq.") as tmp, _quiet_quantizer():
        if fixed_ranges is not None:
            key = hashlib.sha256(json.dumps(sorted(fixed_ranges.items())).encode()).hexdigest()[:16]
            ranges_file, cache_hit = cache_dir / f"learned_{key}.json", True
            write_cache(fixed_ranges, [], ranges_file)
            plan = dataclasses.replace(plan, calibration=dataclasses.replace(plan.calibration, method="minmax"))
        if static:
            if calib_images is None and not cache_hit:
                raise UserError("static activations need calibration images (plan calibration.images)")
            method, calib_opts = ort_method(plan.calibration)
            overrides = {
                l.weight: [{"axis": weight_axis(fp32, l)}]
                for l in static
                if l.weight is not None and resolved.spec(l).weight_granularity == "per-channel"
            }
            extra = {
                "ActivationSymmetric": trt,
                "WeightSymmetric": True,
                # One QDQ pair per consumer: a tensor read by a MatMul and by a residual Add
                # (or a Shape) must reach the Add unquantized.
                "DedicatedQDQPair": True,
                # TensorRT keeps biases in float; ORT CPU fuses int32 biases into QLinearConv.
                "QuantizeBias": not trt,
                "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),
                "TensorQuantOverrides": overrides,
                **calib_opts,
            }
            # On a cache hit the ranges are read from the cache: no reader (and no idle progress bar).
            reader = TensorReader(calib_images, image_input, extra_feeds) if not cache_hit else None
            if reader is not None and plan.calibration.method == "entropy":
                precompute_entropy_ranges(fp32, reader, ranges_file, list(QUANT_OPS))
                reader = None
            if reader is not None and plan.calibration.method == "auto":
                reader.bar.close()
                ranges, decisions = auto_ranges(fp32, calib_images, image_input, extra_feeds, symmetric=trt,
                                                exclude_tokens=token_exclusion(fp32, plan.calibration),
                                                weights_dir=weights_dir)
                write_cache(ranges, decisions, ranges_file)
                reader = None
            out = Path(tmp) / "static.onnx"
            if fp32_path is not None:
                source = str(fp32_path)
            else:
                source = onnx.ModelProto()
                source.CopyFrom(fp32)  # quantize_static rewrites its input to external data in place
            quantize_static(
                source, out, reader, use_external_data_format=fp32_path is not None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
                per_channel=False, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=[l.node for l in static],
                calibrate_method=method, calibration_cache_path=ranges_file, extra_options=extra,
            )
            model = onnx.load(str(out))
            keep_float_consumers(model)
        for per_channel in (True, False):  # quantize_dynamic's granularity is global: one pass per kind
            group = [l for l in dynamic if (resolved.spec(l).weight_granularity == "per-channel") == per_channel]
            if not group:
                continue
            src, out = Path(tmp) / "pre_dynamic.onnx", Path(tmp) / "dynamic.onnx"
            onnx.save(model, str(src))
            quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             weight_type=QuantType.QInt8, nodes_to_quantize=[l.node for l in group],
                             extra_options={"MatMulConstBOnly": True})
            model = onnx.load(str(out))
    if weight_only:
        model = _weight_only(model, weight_only, resolved)
    report = _report(resolved, ranges_file, cache_hit)
    if fixed_ranges is not None:
        report["calibration"] = {"method": "learned by quantization-aware training (no calibration)",
                                 "cache": str(ranges_file), "tensors": len(fixed_ranges)}
        report.pop("auto_calibration", None)
    if smoothing is not None:
        report["smoothing"] = smoothing
    if norm_folding is not None:
        report["norm_folding"] = norm_folding
    if model is source_model:  # nothing was quantized: what follows rewrites in place, and the caller's model stays
        model = onnx.ModelProto()
        model.CopyFrom(source_model)
    if plan.target == "openvino-cpu":
        report["fp16_storage_bytes_saved"] = store_weights_fp16(model, {
            layer.weight for layer in resolved.layers if layer.weight and resolved.spec(layer).precision == "bf16"})
    set_metadata(model, {
        # OpenVINO computes float layers in bf16 where the CPU has it; these nodes stay fp32 (the plan says so).
        "vggt.keep_fp32_nodes": json.dumps([layer.node for layer in resolved.layers
                                            if resolved.spec(layer).precision == "fp32"]),
        "vggt.plan_hash": plan.plan_hash(),
        "vggt.target": plan.target,
        "vggt.layer_precisions": json.dumps(resolved.requested_precisions()),
    })
    return QuantResult(model=model, report=report)


def _weight_only(model: onnx.ModelProto, layers: list[Layer], resolved: ResolvedPlan) -> onnx.ModelProto:
    """int4/int8 weight-only MatMuls as ONNX Runtime's MatMulNBits, one pass per (bits, block size)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    groups: dict[tuple[int, int, bool], list[str]] = {}
    for layer in layers:
        spec = resolved.spec(layer)
        bits = 4 if spec.precision == "int4" else 8
        per_channel = spec.weight_granularity != "per-block"
        groups.setdefault((bits, spec.block_size, per_channel), []).append(layer.node)
    for (bits, block, per_channel), nodes in groups.items():
        # Its nodes_to_include adds to op_types_to_quantize instead of narrowing it: exclude the rest.
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, nodes_to_exclude=others,
                                         op_types_to_quantize=("MatMul",), channel_wised_quantize=per_channel)
        quantizer.process()
        model = quantizer.model.model
    return model


def _auto_choices(resolved: ResolvedPlan, ranges_file: Path) -> dict:
    """What `auto` chose for each activation a statically quantized layer reads, and why."""
    static = {l.node: l.name for l in resolved.partition()[0]}
    rows = []
    for d in read_decisions(ranges_file):
        layers = [static[n] for n in d.get("consumers", []) if n in static]
        if layers:
            rows.append({"tensor": d["tensor"], "layers": layers, "choice": d["choice"], "range": d["range"],
                         "full_range": d["full_range"], "clipped_fraction": d["clipped_fraction"],
                         "error_vs_minmax": d["error_vs_minmax"], "reason": d["reason"]})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["choice"]] = counts.get(r["choice"], 0) + 1
    return {"auto_calibration": {"choices": counts, "tensors": rows}}


def _report(resolved: ResolvedPlan, ranges_file: Path, cache_hit: bool) -> dict:
    plan, layers = resolved.plan, resolved.layers
    rows = []
    counts = {"static": 0, "dynamic": 0, "weight_only": 0, "float": 0}
    for layer in layers:
        spec, mode = resolved.spec(layer), resolved.mode(layer)
        counts[mode.replace("-", "_")] += 1
        granularity = spec.weight_granularity if layer.weight and mode != "float" else None
        rows.append({"layer": layer.name, "node": layer.node, "op": layer.op_type, "precision": resolved.precision(layer),
                     "requested": spec.precision, "weight_granularity": granularity, "activations": mode,
                     "rule": resolved.specs[layer.name].rule})
    ranges = {}
    if ranges_file.is_file():
        raw = json.loads(ranges_file.read_text())
        data = raw.get("data", raw)
        for name, value in (data.items() if isinstance(data, dict) else []):
            try:
                lo, hi = float(np.min(value["lowest"])), float(np.max(value["highest"]))
            except (TypeError, KeyError, ValueError):
                continue
            ranges[name] = max(abs(lo), abs(hi))
    amax = np.array(list(ranges.values())) if ranges else np.zeros(1)
    return {
        "target": plan.target,
        "plan": plan.source,
        "plan_hash": plan.plan_hash(),
        "calibration": {"method": plan.calibration.method, "percentile": plan.calibration.percentile,
                        "images": plan.calibration.images, "num_images": plan.calibration.num_images,
                        "cache": str(ranges_file), "cache_hit": cache_hit,
                        "exclude_tokens": (dataclasses.asdict(plan.calibration.exclude_tokens)
                                           if plan.calibration.exclude_tokens else None)},
        "range_summary": {"tensors": len(ranges), "abs_max_median": float(np.median(amax)), "abs_max_max": float(amax.max())},
        **(_auto_choices(resolved, ranges_file) if plan.calibration.method == "auto" else {}),
        "counts": {"layers": len(layers), **counts},
        "layers": rows,
    }
