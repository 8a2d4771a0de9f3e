"""Shared by the tests of the FP32 weight rewrites (smoothing, LayerNorm folding) and of QAT: the tiny int8
plan they resolve, and ONNX Runtime's own static int8 quantization to compare a rewrite's real int8 error
before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from vggt_deploy.quant.plan import QdqPlan, parse_plan

_PLAN = """\
version: 1
target: {target}
calibration: {{method: minmax, images: calib_data, num_images: 4}}
default: {{precision: int8, weight_granularity: per-channel, activations: static}}
rules:
{rules}
"""


def rewrite_plan(rules: str, target: str, source: str = "<plan>") -> QdqPlan:
    """int8 everywhere (per-channel weights, static activations, MinMax on 4 images) for `target`, plus `rules`."""
    return parse_plan(_PLAN.format(target=target, rules=rules), source=source)


def quantize_minmax(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]], stem: Path) -> onnx.ModelProto:
    """`model`'s MatMuls in QDQ int8 (uint8 per-tensor activations, int8 per-channel weights, MinMax
    ranges over the `calib` feeds); files `stem`.onnx and `stem`.int8.onnx are written."""
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    src, dst = stem.with_name(stem.name + ".onnx"), stem.with_name(stem.name + ".int8.onnx")
    onnx.save(model, str(src))
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return onnx.load(str(dst))


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def int8_error(model: onnx.ModelProto, calib: list[dict], test: list[dict], stem: Path) -> float:
    """Relative L2 error of `model` quantized by `quantize_minmax` against `model` in float, RMS over `test`."""
    quantized = quantize_minmax(model, calib, stem)
    errs = []
    for feeds in test:
        ref, got = run(model, feeds), run(quantized, feeds)
        errs.append(sum(np.sum((a - b) ** 2) for a, b in zip(ref, got)) / sum(np.sum(a**2) for a in ref))
    return float(np.sqrt(np.mean(errs)))
