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

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.errors import UserError
from vggt_deploy.export.onnx_export import set_metadata
from vggt_deploy.quant.calibrate import TensorReader, cache_path, ort_method
from vggt_deploy.quant.layers import QUANT_OPS, Layer, find_layers
from vggt_deploy.quant.plan import QdqPlan, Resolved


@dataclass
class QuantResult:
    model: onnx.ModelProto
    report: dict


def weight_axis(model: onnx.ModelProto, layer: Layer) -> int:
    """The output-channel axis of a layer's weight: Conv [O, I, kh, kw] -> 0, MatMul B [K, N] -> 1, Gemm per transB."""
    if layer.op_type == "Conv":
        return 0
    if layer.op_type == "Gemm":
        node = next(n for n in model.graph.node if n.name == layer.node)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def _unsupported(plan: QdqPlan, resolved: dict[str, Resolved]) -> None:
    for name, r in resolved.items():
        where = f"rule {r.rule} ({plan.rules[r.rule].match!r})" if r.rule is not None else "default"
        if r.spec.precision in ("int4", "int16"):
            raise UserError(f"{plan.source}: {where} sets {r.spec.precision} for {name}; "
                            f"{r.spec.precision} QDQ is not implemented in this release (use int8, fp16 or fp32)")
        if r.spec.precision == "int8" and r.spec.activations == "off":
            raise UserError(f"{plan.source}: {where}: weight-only int8 (activations: off) is not implemented "
                            "in this release; use activations: static or dynamic")


def partition(layers: list[Layer], resolved: dict[str, Resolved]) -> tuple[list[Layer], list[Layer]]:
    """(static QDQ layers, dynamic layers). Activation-only matmuls need `attention_matmuls`."""
    static, dynamic = [], []
    for layer in layers:
        spec = resolved[layer.name].spec
        if not spec.quantized:
            continue
        if layer.weight is None and not spec.attention_matmuls:
            continue
        if spec.activations == "dynamic":
            if layer.weight is not None and layer.op_type == "MatMul":
                dynamic.append(layer)
        else:
            static.append(layer)
    return static, dynamic


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


def quantize(
    fp32: onnx.ModelProto,
    plan: QdqPlan,
    calib_images: np.ndarray | None,
    extra_feeds: dict[str, np.ndarray],
    image_input: str,
    cache_dir: Path,
) -> QuantResult:
    """The plan's QDQ model for its target, plus the report of what was done."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    layers = find_layers(fp32)
    resolved = plan.resolve([l.name for l in layers])
    _unsupported(plan, resolved)
    static, dynamic = partition(layers, resolved)
    trt = plan.target == "tensorrt"
    fp32_bytes = fp32.SerializeToString()
    ranges_file = cache_path(cache_dir, fp32_bytes, plan.calibration)
    cache_hit = ranges_file.is_file()
    model = fp32
    with tempfile.TemporaryDirectory(prefix="vggt-qdq.") as tmp:
        if static:
            if calib_images is None and not cache_hit:
                raise UserError("static activations need calibration images (plan calibration.images)")
            method, calib_opts = ort_method(plan.calibration)
            overrides = {
                l.weight: [{"axis": weight_axis(fp32, l)}]
                for l in static
                if l.weight is not None and resolved[l.name].spec.weight_granularity == "per-channel"
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
            reader = TensorReader(calib_images, image_input, extra_feeds) if calib_images is not None else None
            out = Path(tmp) / "static.onnx"
            source = onnx.ModelProto()
            source.CopyFrom(fp32)  # quantize_static rewrites its input to external data in place
            quantize_static(
                source, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
                per_channel=False, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=[l.node for l in static],
                calibrate_method=method, calibration_cache_path=ranges_file, extra_options=extra,
            )
            model = onnx.load(str(out))
            keep_float_consumers(model)
        if dynamic:
            src, out = Path(tmp) / "pre_dynamic.onnx", Path(tmp) / "dynamic.onnx"
            onnx.save(model, str(src))
            per_channel = any(resolved[l.name].spec.weight_granularity == "per-channel" for l in dynamic)
            quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             weight_type=QuantType.QInt8, nodes_to_quantize=[l.node for l in dynamic],
                             extra_options={"MatMulConstBOnly": True})
            model = onnx.load(str(out))
    report = _report(plan, layers, resolved, static, dynamic, ranges_file, cache_hit)
    set_metadata(model, {
        "vggt.plan_hash": plan.plan_hash(),
        "vggt.target": plan.target,
        "vggt.layer_precisions": json.dumps({l.name: resolved[l.name].spec.precision for l in layers}),
    })
    return QuantResult(model=model, report=report)


def _report(plan, layers, resolved, static, dynamic, ranges_file: Path, cache_hit: bool) -> dict:
    static_names = {l.name for l in static}
    dynamic_names = {l.name for l in dynamic}
    rows = []
    for layer in layers:
        r = resolved[layer.name]
        mode = "static" if layer.name in static_names else "dynamic" if layer.name in dynamic_names else "float"
        rows.append({
            "layer": layer.name, "node": layer.node, "op": layer.op_type, "precision": r.spec.precision if mode != "float" or not r.spec.quantized else "fp32",
            "requested": r.spec.precision, "weight_granularity": r.spec.weight_granularity if layer.weight and mode != "float" else None,
            "activations": mode, "rule": r.rule,
        })
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
                        "cache": str(ranges_file), "cache_hit": cache_hit},
        "range_summary": {"tensors": len(ranges), "abs_max_median": float(np.median(amax)), "abs_max_max": float(amax.max())},
        "counts": {"layers": len(layers), "static": len(static), "dynamic": len(dynamic),
                   "float": len(layers) - len(static) - len(dynamic)},
        "layers": rows,
    }
