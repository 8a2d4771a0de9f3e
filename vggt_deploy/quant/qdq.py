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
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import QUANT_OPS, Layer, find_layers
from vggt_deploy.graph.onnx_io import set_metadata
from vggt_deploy.quant.calibrate import TensorReader, cache_path, ort_method, precompute_entropy_ranges
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


def _unsupported(plan: QdqPlan, layers: list[Layer], resolved: dict[str, Resolved]) -> None:
    """Refuse what this release cannot build rather than quietly running it in another precision."""
    for layer in layers:
        r = resolved[layer.name]
        where = f"rule {r.rule} ({plan.rules[r.rule].match!r})" if r.rule is not None else "default"
        if r.spec.precision == "int16":
            raise UserError(f"{plan.source}: {where} sets int16 for {layer.name}; int16 QDQ is not implemented "
                            "in this release (use int8 or fp32)")
        weight_only = r.spec.quantized and r.spec.activations == "off"
        if weight_only and (layer.op_type != "MatMul" or layer.weight is None):
            if layer.weight is None and not r.spec.attention_matmuls:
                continue  # activation-only matmuls are float unless attention_matmuls is set
            raise UserError(f"{plan.source}: {where}: weight-only {r.spec.precision} supports MatMul layers with "
                            f"weights; {layer.name} is {layer.op_type} (give it its own rule)")
        if r.spec.activations == "dynamic" and r.spec.quantized and layer.weight is not None and layer.op_type != "MatMul":
            raise UserError(f"{plan.source}: {where}: dynamic activations support MatMul layers; {layer.name} is "
                            f"{layer.op_type} (give it a rule with activations: static)")


def partition(layers: list[Layer], resolved: dict[str, Resolved]) -> tuple[list[Layer], list[Layer], list[Layer]]:
    """(static QDQ, dynamic, weight-only) layers. Activation-only matmuls need `attention_matmuls`."""
    static, dynamic, weight_only = [], [], []
    for layer in layers:
        spec = resolved[layer.name].spec
        if not spec.quantized:
            continue
        if layer.weight is None and not spec.attention_matmuls:
            continue
        if spec.activations == "dynamic":
            if layer.weight is not None and layer.op_type == "MatMul":
                dynamic.append(layer)
        elif spec.activations == "off":
            weight_only.append(layer)
        else:
            static.append(layer)
    return static, dynamic, weight_only


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
        yield
    finally:
        root.setLevel(level)


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
    _unsupported(plan, layers, resolved)
    static, dynamic, weight_only = partition(layers, resolved)
    trt = plan.target == "tensorrt"
    fp32_bytes = fp32.SerializeToString()
    ranges_file = cache_path(cache_dir, fp32_bytes, plan.calibration)
    cache_hit = ranges_file.is_file()
    model = fp32
    with tempfile.TemporaryDirectory(prefix="vggt-qdq.") as tmp, _quiet_quantizer():
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
            # On a cache hit the ranges are read from the cache: no reader (and no idle progress bar).
            reader = TensorReader(calib_images, image_input, extra_feeds) if not cache_hit else None
            if reader is not None and plan.calibration.method == "entropy":
                precompute_entropy_ranges(fp32, reader, ranges_file, list(QUANT_OPS))
                reader = None
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
        for per_channel in (True, False):  # quantize_dynamic's granularity is global: one pass per kind
            group = [l for l in dynamic if (resolved[l.name].spec.weight_granularity == "per-channel") == per_channel]
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
    report = _report(plan, layers, resolved, static, dynamic, weight_only, ranges_file, cache_hit)
    set_metadata(model, {
        "vggt.plan_hash": plan.plan_hash(),
        "vggt.target": plan.target,
        "vggt.layer_precisions": json.dumps({l.name: resolved[l.name].spec.precision for l in layers}),
    })
    return QuantResult(model=model, report=report)


def _weight_only(model: onnx.ModelProto, layers: list[Layer], resolved: dict[str, Resolved]) -> onnx.ModelProto:
    """int4/int8 weight-only MatMuls as ONNX Runtime's MatMulNBits, one pass per (bits, block size)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    groups: dict[tuple[int, int, bool], list[str]] = {}
    for layer in layers:
        spec = resolved[layer.name].spec
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


def _report(plan, layers, resolved, static, dynamic, weight_only, ranges_file: Path, cache_hit: bool) -> dict:
    modes = {l.name: "static" for l in static} | {l.name: "dynamic" for l in dynamic} | {l.name: "weight-only" for l in weight_only}
    rows = []
    for layer in layers:
        r = resolved[layer.name]
        mode = modes.get(layer.name, "float")
        # An activation-only matmul under an int8 rule without attention_matmuls runs in float.
        precision = "fp32" if mode == "float" and r.spec.quantized else r.spec.precision
        granularity = r.spec.weight_granularity if layer.weight and mode != "float" else None
        rows.append({"layer": layer.name, "node": layer.node, "op": layer.op_type, "precision": precision,
                     "requested": r.spec.precision, "weight_granularity": granularity, "activations": mode, "rule": r.rule})
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
        "counts": {"layers": len(layers), "static": len(static), "dynamic": len(dynamic), "weight_only": len(weight_only),
                   "float": len(layers) - len(modes)},
        "layers": rows,
    }
