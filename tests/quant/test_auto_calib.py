"""`auto` calibration: ranges chosen by the consumer's output error, outliers that carry signal kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.quant.auto_calib import auto_ranges, fake_quant


def _linear(w: np.ndarray) -> onnx.ModelProto:
    """images [1, T, K] -> MatMul(W [K, N]) -> out."""
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["images", "fc.weight"], ["out"], name="fc")], "lin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, None, n])],
        [numpy_helper.from_array(w.astype(np.float32), "fc.weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quant_matches_onnxruntime_qdq(symmetric):
    """The simulated quantizer is the one ONNX Runtime runs: same scale, zero point and rounding."""
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 16)) * 3).astype(np.float32)
    lo, hi = -2.5, 7.0
    if symmetric:
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.int8(-127), np.int8(127), symmetric=True)
        qtype = TensorProto.INT8
    else:
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255), symmetric=False)
        qtype = TensorProto.UINT8
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             helper.make_tensor("z", qtype, [], [int(zp)])]
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = fake_quant(x, lo, hi, symmetric)
    inside = (x > -2.4) & (x < 6.9)  # at the clip edges int8 symmetric differs by ORT's -128 vs our -128 bound only
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-5)


def test_thin_tail_without_signal_is_clipped():
    """A long thin Gaussian tail: clipping buys resolution for the bulk, and `auto` takes it."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 16)).astype(np.float32) / 6
    x = rng.standard_normal((64, 128, 32)).astype(np.float32)
    x *= np.where(rng.random(x.shape) < 2e-4, 12.0, 1.0).astype(np.float32)  # rare, scattered spikes
    ranges, decisions = auto_ranges(_linear(w), x, "images", None, symmetric=False)
    d = next(d for d in decisions if d.tensor == "images")
    assert d.choice != "minmax", d.reason
    assert d.error_vs_minmax < 0.98
    assert ranges["images"][1] < x.max()
    assert "lowers the consumers' output error" in d.reason


def test_massive_activations_that_carry_signal_are_kept():
    """One token per image with a massive channel (real ViTs' attention sinks): never clipped."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 16)).astype(np.float32) / 6
    x = rng.standard_normal((64, 128, 32)).astype(np.float32)
    x[:, 0, 5] = 300.0 + rng.standard_normal(64)  # the sink token's massive channel, every image
    ranges, decisions = auto_ranges(_linear(w), x, "images", None, symmetric=False)
    d = next(d for d in decisions if d.tensor == "images")
    assert d.choice == "minmax", d.reason
    assert ranges["images"][1] == pytest.approx(float(x.max()))
    assert d.clipped_fraction == 0.0


def test_report_names_each_choice_and_survives_a_cache_hit(tiny_export, tmp_path):
    """export with method auto: report.json says per tensor what was chosen and why, also when cached."""
    from vggt_deploy.graph.onnx_io import load_onnx
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.quant.qdq import quantize
    from vggt_deploy.quant.resolved import resolve_plan

    fp32 = load_onnx(tiny_export.fp32)
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    size = fp32.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    plan = parse_plan("version: 1\ntarget: onnxruntime-cpu\ncalibration: {images: calib_data, num_images: 4}\n"
                      "default: {precision: int8}\n")
    assert plan.calibration.method == "auto"  # the default method
    images = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    resolved = resolve_plan(plan, fp32)
    first = quantize(fp32, resolved, images, {"query_embeds": queries}, "images", tmp_path)
    auto = first.report["auto_calibration"]
    assert auto["tensors"] and sum(auto["choices"].values()) == len(auto["tensors"])
    for row in auto["tensors"]:
        assert row["layers"] and row["reason"]
        lo, hi = row["range"]
        assert row["full_range"][0] <= lo <= hi <= row["full_range"][1]
    second = quantize(fp32, resolved, None, {"query_embeds": queries}, "images", tmp_path)
    assert second.report["calibration"]["cache_hit"]
    assert second.report["auto_calibration"] == auto
