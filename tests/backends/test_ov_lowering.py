"""Zero-point folding (backends/openvino/lowering.py): the same quantization grid, zero points moved into biases."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.backends.openvino.lowering import fold_zero_points, lowered_onnx
from vggt_deploy.errors import UserError

K, N = 8, 6


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _graph() -> onnx.ModelProto:
    """Three activation quantizers, each feeding what decides its fate.

    a: uint8 zero point 37 -> MatMul(int8 weight) + bias, and Reshape -> MatMul(float weight) without bias:
       folded.
    b: zero point 128 -> Relu (no bias to correct): relabelled int8, zero point 0.
    c: zero point 37 -> Relu: kept as it is.
    """
    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, (K, N)).astype(np.int8)
    w_scale = rng.uniform(0.005, 0.02, N).astype(np.float32)
    inits = [
        _init("s", np.float32(0.05)), _init("z37", np.uint8(37)), _init("z128", np.uint8(128)),
        _init("w_q", w_q), _init("w_s", w_scale), _init("w_z", np.zeros(N, np.int8)),
        _init("w_f", rng.normal(size=(K, N)).astype(np.float32)), _init("bias", rng.normal(size=N).astype(np.float32)),
        _init("rows", np.array([-1, K], np.int64)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z37"], ["a_q"], name="a_Q"),
        helper.make_node("DequantizeLinear", ["a_q", "s", "z37"], ["a"], name="a_DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_DQ", axis=1),
        helper.make_node("MatMul", ["a", "w"], ["mm1"], name="mm1"),
        helper.make_node("Add", ["mm1", "bias"], ["y1"], name="add1"),
        helper.make_node("Reshape", ["a", "rows"], ["a_rows"], name="rows"),  # data movement: walked through
        helper.make_node("MatMul", ["a_rows", "w_f"], ["y2"], name="mm2"),
        helper.make_node("QuantizeLinear", ["x", "s", "z128"], ["b_q"], name="b_Q"),
        helper.make_node("DequantizeLinear", ["b_q", "s", "z128"], ["b"], name="b_DQ"),
        helper.make_node("Relu", ["b"], ["y3"], name="relu_b"),
        helper.make_node("QuantizeLinear", ["x", "s", "z37"], ["c_q"], name="c_Q"),
        helper.make_node("DequantizeLinear", ["c_q", "s", "z37"], ["c"], name="c_DQ"),
        helper.make_node("Relu", ["c"], ["y4"], name="relu_c"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, K])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in (("y1", [2, 5, N]), ("y2", [10, N]), ("y3", [2, 5, K]), ("y4", [2, 5, K]))]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits), opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def _zero_point(model: onnx.ModelProto, quant_name: str) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == quant_name)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[2]))


def test_folding_keeps_every_output_and_the_grid():
    original = _graph()
    folded = onnx.ModelProto()
    folded.CopyFrom(original)
    report = fold_zero_points(folded)
    onnx.checker.check_model(folded)
    assert (report.folded, report.kept, report.biases) == (2, 1, 2)
    a, b, c = (_zero_point(folded, q) for q in ("a_Q", "b_Q", "c_Q"))
    assert a.dtype == np.uint8 and a == 0  # shifted by 37 steps, still uint8
    assert b.dtype == np.int8 and b == 0  # relabelled: code - 128
    assert c.dtype == np.uint8 and c == 37  # Relu cannot take a bias correction
    assert [n.op_type for n in folded.graph.node].count("Add") == 3  # the shift, the bias kept, a new bias for mm2
    # Inputs across the whole grid and beyond it on both sides (clipping must agree too).
    x = np.random.default_rng(1).uniform(-3.0, 12.0, (2, 5, K)).astype(np.float32)
    for ref, out in zip(_run(original, x), _run(folded, x)):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_nothing_to_fold_leaves_the_model_alone(tmp_path):
    model = _graph()
    for node in model.graph.node:  # every quantizer already zero-point free
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[2] in ("z37", "z128"):
            node.input[2] = "zero"
    model.graph.initializer.append(_init("zero", np.uint8(0)))
    before = model.SerializeToString()
    assert fold_zero_points(model).folded == 0 and model.SerializeToString() == before
    onnx.save(model, tmp_path / "m.onnx")
    assert lowered_onnx(tmp_path / "m.onnx") is None  # nothing to fold or rewrite: OpenVINO reads the file itself
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert lowered_onnx(tmp_path / "junk.onnx") is None  # and reports the junk in its own words


def test_a_file_to_lower_is_checked_like_load_onnx(tmp_path):
    broken = _graph()
    broken.graph.node.append(helper.make_node("Frobnicate", ["x"], ["junk"], name="junk"))
    onnx.save(broken, tmp_path / "bad.onnx")
    with pytest.raises(UserError, match=r"bad\.onnx: not a valid ONNX model .*Frobnicate"):
        lowered_onnx(tmp_path / "bad.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.onnx: empty file \(0 bytes\)"):
        lowered_onnx(tmp_path / "empty.onnx")
    onnx.save(_graph(), tmp_path / "good.onnx")
    assert lowered_onnx(tmp_path / "good.onnx")[1].fold.folded == 2


def test_the_tiny_qdq_export_folds_and_computes_the_same(tiny_model_dir, tiny_plan_text, tmp_path):
    from vggt_deploy.compile import export_from_model
    from vggt_deploy.quant.plan import parse_plan

    out = export_from_model(tiny_model_dir, tmp_path / "qdq", parse_plan(tiny_plan_text, "tiny.yaml"))
    before = out.qdq.read_bytes()
    data, lowering = lowered_onnx(out.qdq, rewrite=False)
    report = lowering.fold
    assert out.qdq.read_bytes() == before  # the user's file is never rewritten
    assert report.folded >= 10 and report.biases >= report.folded and lowering.rewrites is None
    folded = onnx.load_from_string(data)
    feeds = {"images": np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32),
             "query_embeds": np.load(out.fp32.parent / "queries.npy")}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ref = ort.InferenceSession(str(out.qdq), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    fp32 = ort.InferenceSession(str(out.fp32), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    for r, g, f in zip(ref, got, fp32):
        fold_error, quant_error = np.abs(g - r).max(), np.abs(f - r).max()
        assert fold_error <= max(1e-3 * np.abs(r).max(), 0.05 * quant_error), (fold_error, quant_error)
    assert {m.key: m.value for m in folded.metadata_props} == {m.key: m.value for m in onnx.load(out.qdq).metadata_props}


def test_a_dequantizer_that_disagrees_is_left_alone():
    model = _graph()
    model.graph.initializer.append(_init("s2", np.float32(0.07)))
    next(n for n in model.graph.node if n.name == "a_DQ").input[1] = "s2"  # Q and DQ scales differ: not a pair
    report = fold_zero_points(model)
    assert _zero_point(model, "a_Q") == 37 and report.kept == 2
