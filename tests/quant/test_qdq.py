from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import find_layers
from vggt_deploy.quant.calibrate import calibration_tensors
from vggt_deploy.quant.plan import parse_plan
from vggt_deploy.quant.qdq import quantize
from vggt_deploy.quant.resolved import resolve_plan


@pytest.fixture(scope="module")
def calib():
    from vggt_deploy.quant.plan import CalibrationSpec

    return calibration_tensors(CalibrationSpec(method="minmax", num_images=6), PreprocessConfig(size=32))


def _quantize(tiny_export, text, calib, cache, target=None):
    fp32 = onnx.load(str(tiny_export.fp32))
    plan = parse_plan(text, "tiny.yaml", target=target)
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    return fp32, plan, quantize(fp32, resolve_plan(plan, fp32), calib, {"query_embeds": queries}, "images", cache), queries


def _weight_dq(model):
    """DequantizeLinear nodes that feed a weight (input 1) of MatMul/Gemm/Conv; biases excluded."""
    inits = {t.name for t in model.graph.initializer}
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    return [n for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.output[0] in weight_inputs]


def _run(model, queries, batch=2, seed=0):
    images = np.random.default_rng(seed).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return make_session(model.SerializeToString()).run(None, {"images": images, "query_embeds": queries})


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "tensorrt"])
def test_qdq_counts_follow_the_plan(tiny_export, tiny_plan_text, calib, tmp_path, target):
    fp32, plan, result, queries = _quantize(tiny_export, tiny_plan_text, calib, tmp_path, target)
    static, _, _ = resolve_plan(plan, fp32).partition()
    weight_layers = [l for l in static if l.weight]
    ops = Counter(n.op_type for n in result.model.graph.node)
    # One weight DequantizeLinear per quantized weight layer; activations get a Q/DQ pair each.
    assert len(_weight_dq(result.model)) == len(weight_layers)
    assert ops["QuantizeLinear"] >= len(weight_layers) and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert not any(l.name.startswith(("grounding.", "heads.")) for l in static)
    assert result.report["counts"]["static"] == len(static)
    # Softmax, LayerNormalization and Add never read a dequantized tensor.
    producer = {o: n for n in result.model.graph.node for o in n.output}
    for node in result.model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Add", "Concat"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" or
                       producer[i].input[0] in {t.name for t in result.model.graph.initializer} for i in node.input)
    boxes_q = _run(result.model, queries)[0]
    boxes_f = _run(fp32, queries)[0]
    assert np.abs(boxes_q - boxes_f).max() < 0.1


def test_tensorrt_flavour_passes_its_rules_and_is_symmetric(tiny_export, tiny_plan_text, calib, tmp_path):
    _, _, result, _ = _quantize(tiny_export, tiny_plan_text, calib, tmp_path, "tensorrt")
    assert validate_tensorrt(result.model) == []
    inits = {t.name: t for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = inits[node.input[2]]
            assert zp.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zp).any()


def test_per_channel_and_per_tensor_weights(tiny_export, tiny_plan_text, calib, tmp_path):
    _, _, result, _ = _quantize(tiny_export, tiny_plan_text, calib, tmp_path, "tensorrt")
    inits = {t.name: t for t in result.model.graph.initializer}
    scales = {n.input[0]: inits[n.input[1]] for n in _weight_dq(result.model)}
    per_tensor = [w for w, s in scales.items() if len(s.dims) == 0 or s.dims == [1]]
    per_channel = [w for w, s in scales.items() if len(s.dims) == 1 and s.dims[0] > 1]
    assert per_tensor and per_channel
    fp32 = onnx.load(str(tiny_export.fp32))
    block1 = {l.weight for l in find_layers(fp32) if l.name.startswith("blocks.1.") and l.weight}
    assert {w.replace("_quantized", "") for w in per_tensor} <= block1 | {w for w in per_tensor}
    assert any(w.replace("_quantized", "") in block1 for w in per_tensor)


def test_the_ort_flavour_is_u8s8(tiny_export, tiny_plan_text, calib, tmp_path):
    _, _, result, _ = _quantize(tiny_export, tiny_plan_text, calib, tmp_path)
    inits = {t.name: t for t in result.model.graph.initializer}
    act_types = {inits[n.input[2]].data_type for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert act_types == {onnx.TensorProto.UINT8}
    weight_types = {inits[n.input[0]].data_type for n in _weight_dq(result.model)}
    assert onnx.TensorProto.INT8 in weight_types


def test_dynamic_rules_use_dynamic_quantization(tiny_export, calib, tmp_path):
    text = ("version: 1\ndefault: {precision: int8, activations: dynamic}\nrules:\n  - match: 'heads.*'\n    precision: fp32\n"
            "  - match: 'patch_embed.*'\n    activations: static\n")
    _, _, result, queries = _quantize(tiny_export, text, calib, tmp_path)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["DynamicQuantizeLinear"] + ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] > 0
    assert result.report["counts"]["dynamic"] > 0
    _run(result.model, queries)


def test_calibration_cache_hits_when_only_rules_change(tiny_export, tiny_plan_text, calib, tmp_path):
    _, _, first, _ = _quantize(tiny_export, tiny_plan_text, calib, tmp_path)
    assert not first.report["calibration"]["cache_hit"]
    changed_rule = tiny_plan_text.replace("weight_granularity: per-tensor", "weight_granularity: per-channel")
    _, _, second, _ = _quantize(tiny_export, changed_rule, None, tmp_path)  # no images: must come from cache
    assert second.report["calibration"]["cache_hit"]
    changed_calib = tiny_plan_text.replace("method: minmax", "method: percentile")
    _, _, third, _ = _quantize(tiny_export, changed_calib, calib, tmp_path)
    assert not third.report["calibration"]["cache_hit"]


def test_unimplemented_precisions_are_refused(tiny_export, calib, tmp_path):
    text = "version: 1\ndefault: {precision: int16}\n"
    with pytest.raises(UserError, match="int16 is not implemented"):
        _quantize(tiny_export, text, calib, tmp_path)
    conv_int4 = "version: 1\ndefault: {precision: int4, weight_granularity: per-block, activations: off}\n"
    with pytest.raises(UserError, match="patch_embed.stem.0 is Conv"):
        _quantize(tiny_export, conv_int4, calib, tmp_path)


def test_int4_weight_only_blocks(tiny_export, calib, tmp_path):
    text = """\
version: 1
default: {precision: fp32}
rules:
  - match: "blocks.*.mlp.*"
    precision: int4
    weight_granularity: per-block
    block_size: 16
    activations: "off"
"""
    fp32, _, result, queries = _quantize(tiny_export, text, None, tmp_path)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["MatMulNBits"] == 4  # fc1 and fc2 of both blocks
    assert result.report["counts"]["weight_only"] == 4
    assert np.abs(_run(result.model, queries)[0] - _run(fp32, queries)[0]).max() < 0.1


def test_too_few_or_no_calibration_images(tmp_path):
    from vggt_deploy.quant.plan import CalibrationSpec

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no calibration images"):
        calibration_tensors(CalibrationSpec(images=str(tmp_path / "empty")), PreprocessConfig(size=32))
    with pytest.raises(UserError, match="256 calibration images, but the plan asks for 300"):
        calibration_tensors(CalibrationSpec(num_images=300), PreprocessConfig(size=32))
    with pytest.raises(UserError, match="calibration source not found"):
        calibration_tensors(CalibrationSpec(images=str(tmp_path / "nope")), PreprocessConfig(size=32))


@pytest.mark.slow
def test_entropy_calibration_clips_instead_of_copying_minmax(tiny_export, calib, tmp_path):
    """onnxruntime's defaults make entropy ranges equal minmax; ours search 2048-bin thresholds."""
    import json

    def ranges(method):
        text = f"version: 1\ncalibration: {{method: {method}, num_images: 6}}\ndefault: {{precision: int8}}\n"
        _quantize(tiny_export, text, calib, tmp_path / method)
        (cache,) = (tmp_path / method).glob("ranges_*.json")
        data = json.loads(cache.read_text())["data"]

        def value(v):
            return float(np.max(v["data"] if isinstance(v, dict) else v))

        return {k: (value(v["lowest"]), value(v["highest"])) for k, v in data.items()}

    minmax, entropy = ranges("minmax"), ranges("entropy")
    assert minmax.keys() == entropy.keys()
    inside = [minmax[k][0] - 1e-6 <= entropy[k][0] and entropy[k][1] <= minmax[k][1] + 1e-6 for k in minmax]
    assert all(inside)
    clipped = [k for k in minmax if entropy[k][1] - entropy[k][0] < 0.99 * (minmax[k][1] - minmax[k][0])]
    assert len(clipped) >= len(minmax) // 4
