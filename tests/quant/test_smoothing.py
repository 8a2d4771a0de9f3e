"""SmoothQuant folded into the FP32 graph: same outputs, same ops, flatter activations, lower int8 error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from int8_quant import int8_error, rewrite_plan
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.quant.resolved import resolve_plan
from vggt_deploy.quant.smoothing import apply_smoothing, smooth, smoothing_factors, smoothing_groups

D, T = 16, 24
OUTLIERS = [3, 11]  # LayerNorm channels whose gamma is 80x larger: activation outliers

SMOOTH_ALL = '  - match: "*"\n    smoothing: {alpha: %s}'


def _plan(rules: str = SMOOTH_ALL % 0.5):
    return rewrite_plan(rules, "onnxruntime-cpu")


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ln_qkv(seed=0, extra_reader: str | None = None, zero_row: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm(gamma with 2 outlier channels) -> q, k, v MatMuls (+ an extra reader of the LN output)."""
    rng = np.random.default_rng(seed)
    gamma = 1 + 0.1 * rng.standard_normal(D)
    gamma[OUTLIERS] *= 80
    inits = {"blocks.0.norm1.weight": gamma, "blocks.0.norm1.bias": 0.1 * rng.standard_normal(D)}
    nodes = [helper.make_node("LayerNormalization", ["x", "blocks.0.norm1.weight", "blocks.0.norm1.bias"], ["ln"],
                              name="norm1", axis=-1, epsilon=1e-5)]
    outputs = []
    for p in "qkv":
        w = 0.2 * rng.standard_normal((D, D))
        w[OUTLIERS] /= 40  # as in trained models: outlier channels carry no more output than the others
        if zero_row:
            w[1] = 0  # a channel without weight range: s must stay 1
        inits[f"blocks.0.attn.{p}.weight"] = w
        nodes.append(helper.make_node("MatMul", ["ln", f"blocks.0.attn.{p}.weight"], [p], name=f"attn_{p}"))
        outputs.append(_vi(p, [1, None, D]))
    if extra_reader == "residual":
        nodes.append(helper.make_node("Add", ["ln", "x"], ["res"], name="residual"))
        outputs.append(_vi("res", [1, None, D]))
    elif extra_reader == "shape":
        nodes.append(helper.make_node("Shape", ["ln"], ["shape"], name="shape_of_ln"))
        outputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [3]))
    return _model(nodes, [_vi("x", [1, None, D])], outputs, inits)


def _mlp(seed=1, ln: bool = False) -> onnx.ModelProto:
    """x -> MatMul(W1) -> Add(b1) -> MatMul(W2): fc2's factors fold into fc1's columns and bias.

    With `ln`, a LayerNorm before fc1 makes fc1 one group's reader and the next group's producer."""
    rng = np.random.default_rng(seed)
    w1 = 0.3 * rng.standard_normal((D, 32))
    w1[:, [5, 20]] *= 80
    inits = {"blocks.0.mlp.fc1.weight": w1, "blocks.0.mlp.fc1.bias": 0.1 * rng.standard_normal(32),
             "blocks.0.mlp.fc2.weight": 0.2 * rng.standard_normal((32, D))}
    nodes = []
    if ln:
        inits |= {"blocks.0.norm2.weight": 1 + rng.standard_normal(D), "blocks.0.norm2.bias": rng.standard_normal(D)}
        nodes.append(helper.make_node("LayerNormalization", ["x0", "blocks.0.norm2.weight", "blocks.0.norm2.bias"],
                                      ["x"], name="norm2", axis=-1))
    nodes += [helper.make_node("MatMul", ["x", "blocks.0.mlp.fc1.weight"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "blocks.0.mlp.fc1.bias"], ["h"], name="fc1_bias"),
             helper.make_node("MatMul", ["h", "blocks.0.mlp.fc2.weight"], ["y"], name="fc2")]
    return _model(nodes, [_vi("x0" if ln else "x", [1, None, D])], [_vi("y", [1, None, D])], inits)


def _ln_gemm(trans_b: int, seed=2) -> onnx.ModelProto:
    """x [1, D] -> LayerNorm -> Gemm(W, bias, transB)."""
    rng = np.random.default_rng(seed)
    gamma = 1 + 0.1 * rng.standard_normal(D)
    gamma[OUTLIERS] *= 80
    w = 0.2 * rng.standard_normal((D, 8))
    inits = {"blocks.0.norm.weight": gamma, "blocks.0.norm.bias": 0.1 * rng.standard_normal(D),
             "blocks.0.head.weight": w.T if trans_b else w, "blocks.0.head.bias": rng.standard_normal(8)}
    nodes = [helper.make_node("LayerNormalization", ["x", "blocks.0.norm.weight", "blocks.0.norm.bias"], ["ln"],
                              name="norm", axis=-1),
             helper.make_node("Gemm", ["ln", "blocks.0.head.weight", "blocks.0.head.bias"], ["y"], name="head",
                              transB=trans_b)]
    return _model(nodes, [_vi("x", [1, D])], [_vi("y", [1, 8])], inits)


def _inputs(seed: int, n: int, shape=(T, D)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _equivalent(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    for ya, yb in zip(_run(a, feeds), _run(b, feeds)):
        np.testing.assert_allclose(yb, ya, rtol=1e-4, atol=1e-4)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _init(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_layernorm_qkv_is_smoothed_exactly_with_no_new_op():
    model = _ln_qkv()
    before = model.SerializeToString()
    smoothed, report = smooth(model, resolve_plan(_plan(), model), _inputs(0, 8), "x")
    assert model.SerializeToString() == before  # the input model is not mutated
    assert _ops(smoothed) == _ops(model) and len(smoothed.graph.initializer) == len(model.graph.initializer)
    _equivalent(model, smoothed, {"x": _inputs(99, 1)[0][None]})  # inputs other than the statistics'
    (row,) = report["groups"]
    assert row["tensor"] == "ln" and row["producer"] == "LayerNormalization" and row["producer_node"] == "norm1"
    assert row["layers"] == ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"] and row["alpha"] == 0.5
    assert row["act_ratio_before"] > 5 * row["act_ratio_after"]  # outliers flattened
    assert row["weight_ratio_after"] > row["weight_ratio_before"]  # ...and moved into the weights
    assert row["s_max"] > 5 * row["s_min"] > 0 and report["skipped"] == []
    gamma, new_gamma = _init(model, "blocks.0.norm1.weight"), _init(smoothed, "blocks.0.norm1.weight")
    assert np.abs(new_gamma).max() / np.median(np.abs(new_gamma)) < np.abs(gamma).max() / np.median(np.abs(gamma)) / 5


@pytest.mark.parametrize("reader", ["residual", "shape"])
def test_tensor_with_a_reader_that_cannot_compensate_is_skipped(reader):
    model = _ln_qkv(extra_reader=reader)
    groups, skipped = smoothing_groups(model, resolve_plan(_plan(), model))
    assert groups == []
    (entry,) = skipped
    assert entry["tensor"] == "ln" and len(entry["layers"]) == 3
    assert ("Add" if reader == "residual" else "Shape") in entry["reason"] and "compensate" in entry["reason"]
    out, report = smooth(model, resolve_plan(_plan(), model), None, "x")  # no group: ONNX Runtime never runs
    assert out is model and report == {"groups": [], "skipped": skipped}


def test_previous_linear_absorbs_the_factors():
    model = _mlp()
    smoothed, report = smooth(model, resolve_plan(_plan(), model), _inputs(1, 8), "x")
    (row,) = report["groups"]
    assert row["tensor"] == "h" and row["producer"] == "MatMul+Add" and row["layers"] == ["blocks.0.mlp.fc2"]
    assert row["act_ratio_before"] > 5 * row["act_ratio_after"]
    (entry,) = report["skipped"]  # fc1 reads the graph input: nothing to fold into
    assert entry["layers"] == ["blocks.0.mlp.fc1"] and "graph input" in entry["reason"]
    assert _ops(smoothed) == _ops(model)
    for name in ("blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight"):
        assert not np.allclose(_init(smoothed, name), _init(model, name))
    _equivalent(model, smoothed, {"x": _inputs(98, 1)[0][None]})


def test_a_linear_can_be_a_reader_and_the_next_producer():
    """LN -> fc1 (+b1) -> fc2: fc1's rows take the first group's factors, its columns the second's."""
    model = _mlp(ln=True)
    smoothed, report = smooth(model, resolve_plan(_plan(), model), _inputs(1, 8), "x0")
    assert [r["producer"] for r in report["groups"]] == ["LayerNormalization", "MatMul+Add"]
    assert report["skipped"] == [] and _ops(smoothed) == _ops(model)
    assert len(smoothed.graph.initializer) == len(model.graph.initializer)
    _equivalent(model, smoothed, {"x0": _inputs(93, 1)[0][None]})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_is_scaled_on_its_input_axis(trans_b):
    model = _ln_gemm(trans_b)
    smoothed, report = smooth(model, resolve_plan(_plan(), model), _inputs(2, 16, (D,)), "x")
    (row,) = report["groups"]
    assert row["layers"] == ["blocks.0.head"] and row["act_ratio_before"] > 5 * row["act_ratio_after"]
    _equivalent(model, smoothed, {"x": _inputs(97, 1, (D,))[0][None]})
    s = _init(model, "blocks.0.norm.weight") / _init(smoothed, "blocks.0.norm.weight")
    w, new_w = _init(model, "blocks.0.head.weight"), _init(smoothed, "blocks.0.head.weight")
    np.testing.assert_allclose(new_w, w * (s[None, :] if trans_b else s[:, None]), rtol=1e-5)


def test_conv_and_act_by_act_layers_are_skipped_with_reasons():
    rng = np.random.default_rng(3)
    inits = {"patch_embed.proj.weight": rng.standard_normal((4, 3, 2, 2)),
             "blocks.0.fc.weight": rng.standard_normal((4, 4))}
    nodes = [helper.make_node("Conv", ["images", "patch_embed.proj.weight"], ["c"], name="patch", strides=[2, 2]),
             helper.make_node("Transpose", ["c"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["t"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "blocks.0.fc.weight"], ["f"], name="fc"),
             helper.make_node("MatMul", ["f", "f"], ["y"], name="self_mm")]
    model = _model(nodes, [_vi("images", [1, 3, 4, 4])], [_vi("y", [1, 2, 2, 4])], inits)
    groups, skipped = smoothing_groups(model, resolve_plan(_plan(), model))
    assert groups == []
    reasons = {tuple(e["layers"]): e["reason"] for e in skipped}
    assert reasons[("patch_embed.proj",)] == "Conv input: not smoothed"
    assert "Relu" in reasons[("blocks.0.fc",)]  # its producer cannot absorb the factors
    assert "cannot compensate" in reasons[("self_mm",)]


def test_every_reader_must_ask_for_smoothing_and_mixed_alphas_are_noted():
    model = _ln_qkv()
    off = '  - match: "blocks.0.attn.k"\n    smoothing: off\n' + SMOOTH_ALL % 0.5
    groups, skipped = smoothing_groups(model, resolve_plan(_plan(off), model))
    assert groups == [] and "blocks.0.attn.k" in skipped[0]["reason"]
    mixed = '  - match: "blocks.0.attn.v"\n    smoothing: {alpha: 0.8}\n' + SMOOTH_ALL % 0.5
    (group,), _ = smoothing_groups(model, resolve_plan(_plan(mixed), model))
    assert group.alpha == 0.5 and "0.8" in group.note


def test_factors_alpha_edges_and_empty_channels():
    a, w = np.array([4.0, 0.0, 9.0, 1e-30]), np.array([2.0, 3.0, 0.0, 1e30])
    s0, s1 = smoothing_factors(a, w, 0.0), smoothing_factors(a, w, 1.0)
    np.testing.assert_allclose(s0, [0.5, 1, 1, 1e-5])  # 1/w, clamped; no range -> 1
    np.testing.assert_allclose(s1, [4.0, 1, 1, 1e-5])
    np.testing.assert_allclose(smoothing_factors(a, w, 0.5), [np.sqrt(2.0), 1, 1, 1e-5])


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_alpha_edges_stay_finite_and_exact(alpha):
    model = _ln_qkv(zero_row=True)
    smoothed, report = smooth(model, resolve_plan(_plan(SMOOTH_ALL % alpha), model), _inputs(0, 4), "x")
    for init in smoothed.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(init)).all()
    _equivalent(model, smoothed, {"x": _inputs(96, 1)[0][None]})
    s = _init(model, "blocks.0.norm1.weight") / _init(smoothed, "blocks.0.norm1.weight")
    assert s[1] == 1.0  # zero weight row: no factor
    if alpha == 0.0:  # s_k = 1 / max_n |W_kn| over q, k and v
        rows = np.max([np.abs(_init(model, f"blocks.0.attn.{p}.weight")).max(axis=1) for p in "qkv"], axis=0)
        np.testing.assert_allclose(np.delete(s, 1), 1 / np.delete(rows, 1), rtol=1e-5)
    assert np.isfinite(report["groups"][0]["s_max"]) and report["groups"][0]["s_min"] > 0


def test_shared_initializers_are_copied_for_the_group():
    """q's weight and the LayerNorm's gamma/beta are also read outside the group: they keep their values there."""
    model = _ln_qkv()
    g = model.graph
    g.input.append(_vi("y", [1, None, D]))
    g.node.extend([helper.make_node("MatMul", ["y", "blocks.0.attn.q.weight"], ["o"], name="other"),
                   helper.make_node("LayerNormalization", ["y", "blocks.0.norm1.weight", "blocks.0.norm1.bias"],
                                    ["yln"], name="norm_y", axis=-1, epsilon=1e-5)])
    g.output.extend([_vi("o", [1, None, D]), _vi("yln", [1, None, D])])
    rules = '  - match: "blocks.0.attn.[qkv]"\n    smoothing: {alpha: 0.5}'
    smoothed, report = smooth(model, resolve_plan(_plan(rules), model), _inputs(0, 4), "x",
                              {"y": _inputs(5, 1)[0][None]})
    assert len(report["groups"]) == 1 and _ops(smoothed) == _ops(model)
    for name in ("blocks.0.attn.q.weight", "blocks.0.norm1.weight", "blocks.0.norm1.bias"):
        np.testing.assert_array_equal(_init(smoothed, name), _init(model, name))  # other readers see the original
    nodes = {n.name: n for n in smoothed.graph.node}
    assert nodes["other"].input[1] == "blocks.0.attn.q.weight" and nodes["norm_y"].input[1] == "blocks.0.norm1.weight"
    assert nodes["attn_q"].input[1] != "blocks.0.attn.q.weight" and nodes["norm1"].input[1] != "blocks.0.norm1.weight"
    assert nodes["attn_k"].input[1] == "blocks.0.attn.k.weight"  # read by the group only: changed in place
    _equivalent(model, smoothed, {"x": _inputs(95, 1)[0][None], "y": _inputs(94, 1)[0][None]})


def test_apply_refuses_groups_of_another_model():
    model = _ln_qkv()
    groups, _ = smoothing_groups(model, resolve_plan(_plan(), model))
    with pytest.raises(ValueError):
        apply_smoothing(_ln_qkv(extra_reader="residual"), groups, {"ln": np.ones(D)})


def test_int8_error_falls_with_smoothing(tmp_path):
    model = _ln_qkv()
    calib, test = _inputs(10, 8), _inputs(11, 4)
    smoothed, _ = smooth(model, resolve_plan(_plan(), model), calib, "x")
    calib, test = [{"x": c[None]} for c in calib], [{"x": x[None]} for x in test]
    plain, smooth_err = int8_error(model, calib, test, tmp_path / "plain"), int8_error(smoothed, calib, test,
                                                                                       tmp_path / "smooth")
    print(f"int8 relative error: plain {plain:.4f}, smoothed {smooth_err:.4f} ({plain / smooth_err:.1f}x lower)")
    assert smooth_err < plain / 4
