"""Exact OpenVINO rewrites (backends/openvino/rewrites.py): fewer nodes, the same function in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.backends.openvino.heads_first import heads_first
from vggt_deploy.backends.openvino.lowering import fold_zero_points, lowered_onnx
from vggt_deploy.backends.openvino.onnx_graph import GraphIndex
from vggt_deploy.backends.openvino.rewrites import (
    conv_tokens,
    fold_key_affines,
    fuse_sibling_matmuls,
    quantize_before_moves,
    rewrite_for_cpu,
    transpose_b,
)

B, T, C, HEADS = 2, 5, 8, 2
HS = C // HEADS


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _attention(softmax_axis: int = -1, scores_out: bool = False) -> onnx.ModelProto:
    """q/k projections with per-head LayerNorms (as model/layers.py exports them), Q·Kᵀ + mask, softmax."""
    rng = np.random.default_rng(0)
    inits = [_init("wq", rng.normal(size=(C, C)).astype(np.float32)),
             _init("wk", rng.normal(size=(C, C)).astype(np.float32)),
             _init("flat", np.array([-1, T * HEADS, HS], np.int64)), _init("heads", np.array([-1, T, HEADS, HS], np.int64)),
             _init("mask", rng.normal(size=(T, T)).astype(np.float32))]
    for side in "qk":  # affines far from identity, so a wrong fold shows
        inits += [_init(f"g{side}", rng.uniform(0.3, 3.0, HS).astype(np.float32)),
                  _init(f"b{side}", rng.normal(size=HS).astype(np.float32))]
    nodes = []
    for side, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1])):
        nodes += [helper.make_node("MatMul", ["x", f"w{side}"], [f"{side}_lin"]),
                  helper.make_node("Reshape", [f"{side}_lin", "flat"], [f"{side}_flat"]),
                  helper.make_node("LayerNormalization", [f"{side}_flat", f"g{side}", f"b{side}"], [f"{side}_norm"],
                                   axis=-1, name=f"{side}_norm"),
                  helper.make_node("Reshape", [f"{side}_norm", "heads"], [f"{side}_heads"]),
                  helper.make_node("Transpose", [f"{side}_heads"], [f"{side}_t"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]),
              helper.make_node("Add", ["scores", "mask"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["probs"], axis=softmax_axis)]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [B, HEADS, T, T])]
    if scores_out:
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [B, HEADS, T, T]))
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, C])], outputs)


def _x(seed=1):
    return {"x": np.random.default_rng(seed).normal(size=(B, T, C)).astype(np.float32)}


def _norm(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_key_affine_moves_into_the_query_and_attention_is_unchanged():
    model = _attention()
    before = _run(model, _x())
    assert fold_key_affines(GraphIndex(model.graph)) == 1
    onnx.checker.check_model(model)
    k_norm, q_norm = _norm(model, "k_norm"), _norm(model, "q_norm")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(k_norm.input) == 2 and np.all(inits[k_norm.input[1]] == 1)  # no affine left on the key
    np.testing.assert_allclose(inits[q_norm.input[1]], inits["gq"] * inits["gk"], rtol=1e-6)
    np.testing.assert_allclose(_run(model, _x())[0], before[0], atol=1e-6)


@pytest.mark.parametrize("case", ["scores are an output", "softmax over another axis"])
def test_key_affine_stays_where_the_logits_themselves_matter(case):
    model = _attention(scores_out=True) if case == "scores are an output" else _attention(softmax_axis=1)
    before = model.SerializeToString()
    assert fold_key_affines(GraphIndex(model.graph)) == 0 and model.SerializeToString() == before


def test_key_transpose_becomes_a_row_copy_and_a_transpose_b():
    model = _attention()
    before = _run(model, _x())
    assert transpose_b(GraphIndex(model.graph)) == 1
    assert transpose_b(GraphIndex(model.graph)) == 0  # idempotent: the swap left is what OpenVINO folds
    onnx.checker.check_model(model)
    perms = [list(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms == [[0, 2, 1, 3], [0, 2, 1, 3], [0, 1, 3, 2]]  # q's, then k's rows and the swap
    np.testing.assert_array_equal(_run(model, _x())[0], before[0])


def _conv_tokens_model(extra_reader: bool = False) -> onnx.ModelProto:
    """The patch embedding's flatten(2).transpose(1, 2) after a 1x1 Conv."""
    rng = np.random.default_rng(0)
    inits = [_init("w", rng.normal(size=(6, 3, 1, 1)).astype(np.float32)), _init("b", rng.normal(size=6).astype(np.float32)),
             _init("flat", np.array([-1, 6, 16], np.int64))]
    nodes = [helper.make_node("Conv", ["img", "w", "b"], ["feat"]),
             helper.make_node("Reshape", ["feat", "flat"], ["grid"]),
             helper.make_node("Transpose", ["grid"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("Relu", ["tokens"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 6])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["grid"], ["grid_out"]))
        outputs.append(helper.make_tensor_value_info("grid_out", TensorProto.FLOAT, [2, 6, 16]))
    return _model(nodes, inits, [helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 3, 4, 4])], outputs)


def test_conv_tokens_transpose_in_the_conv_layout():
    model = _conv_tokens_model()
    feeds = {"img": np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype(np.float32)}
    before = _run(model, feeds)
    assert conv_tokens(GraphIndex(model.graph)) == 1
    onnx.checker.check_model(model)
    perms = [list(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms == [[0, 2, 3, 1]]
    np.testing.assert_array_equal(_run(model, feeds)[0], before[0])


def test_conv_tokens_leave_a_grid_that_is_read_elsewhere():
    model = _conv_tokens_model(extra_reader=True)
    assert conv_tokens(GraphIndex(model.graph)) == 0


K, N = 8, (6, 6, 4)


def _siblings(other_scale: bool = False) -> onnx.ModelProto:
    """Three int8 MatMuls behind their own (equal) activation quantizers, as the exporter writes q, k and v:
    per-channel weights with a bias, per-tensor weights with a bias, per-channel weights without one; and a
    fourth whose quantizer has another scale (`other_scale`), which must stay apart."""
    rng = np.random.default_rng(0)
    inits = [_init("s", np.float32(0.05)), _init("s2", np.float32(0.07)), _init("z", np.uint8(37))]
    nodes, outputs = [], []
    for i, n in enumerate((*N, 5) if other_scale else N):
        scale = "s2" if i == 3 else "s"
        per_tensor = i == 1
        inits += [_init(f"w{i}", rng.integers(-127, 128, (K, n)).astype(np.int8)),
                  _init(f"ws{i}", np.float32(0.01) if per_tensor else rng.uniform(0.005, 0.02, n).astype(np.float32)),
                  _init(f"wz{i}", np.int8(0) if per_tensor else np.zeros(n, np.int8))]
        nodes += [helper.make_node("QuantizeLinear", ["x", scale, "z"], [f"xq{i}"]),
                  helper.make_node("DequantizeLinear", [f"xq{i}", scale, "z"], [f"xd{i}"]),
                  helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"], axis=1),
                  helper.make_node("MatMul", [f"xd{i}", f"wd{i}"], [f"mm{i}"])]
        result = f"mm{i}"
        if i != 2:
            inits.append(_init(f"b{i}", rng.normal(size=n).astype(np.float32)))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"y{i}"]))
            result = f"y{i}"
        nodes.append(helper.make_node("Relu", [result], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [B, T, n]))
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, K])], outputs)


def _xk(seed=3):
    return {"x": np.random.default_rng(seed).normal(size=(B, T, K)).astype(np.float32)}


def test_sibling_matmuls_run_as_one_and_compute_the_same():
    model = _siblings(other_scale=True)
    before = _run(model, _xk())
    report = rewrite_for_cpu(model)
    onnx.checker.check_model(model)
    assert report.fused_matmuls == 1 and _ops(model).count("MatMul") == 2 and _ops(model).count("Split") == 1
    assert _ops(model).count("QuantizeLinear") == 2  # the fused group's spare quantizers were dropped
    for got, ref in zip(_run(model, _xk()), before):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_siblings_are_found_after_zero_point_folding(tmp_path):
    """Folding gives each quantizer its own shift Add: the siblings still read the same values."""
    model = _siblings()
    before = _run(model, _xk())
    onnx.save(model, tmp_path / "m.onnx")
    data, lowering = lowered_onnx(tmp_path / "m.onnx")
    assert lowering.fold.folded == 3 and lowering.rewrites.fused_matmuls == 1
    lowered = onnx.load_from_string(data)
    assert _ops(lowered).count("MatMul") == 1
    for got, ref in zip(_run(lowered, _xk()), before):  # folding's rounding flips only
        np.testing.assert_allclose(got, ref, atol=0.05 * np.abs(ref).max())
    folded_only = _siblings()
    fold_zero_points(folded_only)
    assert fuse_sibling_matmuls(GraphIndex(folded_only.graph)) == 1


def test_the_tiny_export_lowers_to_fewer_nodes_and_the_same_outputs(tiny_model_dir, tiny_plan_text, tmp_path):
    from vggt_deploy.compile import export_from_model
    from vggt_deploy.quant.plan import parse_plan

    plan = tiny_plan_text.replace('  - match: "grounding.*"\n    precision: fp32\n', "")  # int8 siblings there too
    out = export_from_model(tiny_model_dir, tmp_path / "qdq", parse_plan(plan, "tiny.yaml"))
    feeds = {"images": np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32),
             "query_embeds": np.load(out.fp32.parent / "queries.npy")}
    for path in (out.fp32, out.qdq):
        before = path.read_bytes()
        data, lowering = lowered_onnx(path, fold=False)
        assert path.read_bytes() == before  # the user's file is never rewritten
        rewrites = lowering.rewrites
        assert rewrites.key_affines >= 2 and rewrites.conv_tokens == 1, rewrites
        assert rewrites.quantizers_moved >= (2 if path == out.qdq else 0), rewrites
        assert rewrites.transposes_b >= 2, rewrites
        assert rewrites.fused_matmuls >= (2 if path == out.qdq else 0), rewrites  # int8 weights only
        lowered = onnx.load_from_string(data)
        original = onnx.load(path)
        fewer = len(original.graph.node) - len(lowered.graph.node)
        # In ONNX the float graph gains the swaps (folded into MatMuls by OpenVINO); the QDQ one loses nodes.
        assert fewer > 0 if path == out.qdq else fewer == -rewrites.transposes_b
        for ref, got in zip(_run(original, feeds), _run(lowered, feeds)):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert {m.key: m.value for m in lowered.metadata_props} == {m.key: m.value for m in original.metadata_props}


def _attention_output(extra_reader: bool = False) -> onnx.ModelProto:
    """(B, nh, T, hs) -> Transpose -> Reshape (B, T, C) -> shift Add -> Q -> DQ -> MatMul: the attention
    output on its way into the projection, as zero-point folding leaves it."""
    rng = np.random.default_rng(0)
    inits = [_init("s", np.float32(0.02)), _init("z", np.uint8(0)), _init("shift", np.float32(0.74)),
             _init("rows", np.array([-1, T, C], np.int64)), _init("w", rng.normal(size=(C, 3)).astype(np.float32))]
    nodes = [helper.make_node("Transpose", ["heads"], ["seq"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["seq", "rows"], ["flat"]),
             helper.make_node("Add", ["flat", "shift"], ["shifted"]),
             helper.make_node("QuantizeLinear", ["shifted", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("MatMul", ["dq", "w"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, T, 3])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["flat"], ["flat_out"]))
        outputs.append(helper.make_tensor_value_info("flat_out", TensorProto.FLOAT, [B, T, C]))
    inputs = [helper.make_tensor_value_info("heads", TensorProto.FLOAT, [B, HEADS, T, HS])]
    return _model(nodes, inits, inputs, outputs)


def test_quantizer_moves_above_the_transpose_and_reshape():
    model = _attention_output()
    feeds = {"heads": np.random.default_rng(4).normal(size=(B, HEADS, T, HS)).astype(np.float32)}
    before = _run(model, feeds)
    assert rewrite_for_cpu(model).quantizers_moved == 1
    onnx.checker.check_model(model)
    assert _ops(model) == ["Add", "QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "MatMul"]
    np.testing.assert_array_equal(_run(model, feeds)[0], before[0])  # rounding commutes with moving: exact


def test_quantizer_stays_below_a_reshape_that_is_read_elsewhere():
    model = _attention_output(extra_reader=True)
    assert quantize_before_moves(GraphIndex(model.graph)) == 0


def _fused_attention(k_epsilon: float = 1e-5, v_read_elsewhere: bool = False, fused_v: bool = True) -> onnx.ModelProto:
    """One q/k/v projection (q/k only, with `fused_v` off: v has its own, as in the grounding layers' self-
    attention), split as `fuse_sibling_matmuls` leaves it, then attention with per-head q/k LayerNorms
    (affines far from identity, so a slot given the wrong one shows) and the output projection's view."""
    rng = np.random.default_rng(4)
    parts = 3 if fused_v else 2
    inits = [_init("w", rng.normal(size=(C, parts * C)).astype(np.float32)),
             _init("b", rng.normal(size=parts * C).astype(np.float32)), _init("wv", rng.normal(size=(C, C)).astype(np.float32)),
             _init("widths", np.array([C] * parts, np.int64)), _init("flat", np.array([-1, T * HEADS, HS], np.int64)),
             _init("heads", np.array([-1, T, HEADS, HS], np.int64)), _init("rows", np.array([-1, T, C], np.int64))]
    for side in "qk":
        inits += [_init(f"g{side}", rng.uniform(0.3, 3.0, HS).astype(np.float32)),
                  _init(f"b{side}", rng.normal(size=HS).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["lin"]), helper.make_node("Add", ["lin", "b"], ["qkv"]),
             helper.make_node("Split", ["qkv", "widths"], ["q", "k", "v"][:parts], axis=-1)]
    if not fused_v:
        nodes.append(helper.make_node("MatMul", ["x", "wv"], ["v"]))
    for side, perm, eps in (("q", [0, 2, 1, 3], 1e-5), ("k", [0, 2, 3, 1], k_epsilon)):
        nodes += [helper.make_node("Reshape", [side, "flat"], [f"{side}_flat"]),
                  helper.make_node("LayerNormalization", [f"{side}_flat", f"g{side}", f"b{side}"], [f"{side}_norm"],
                                   axis=-1, epsilon=eps),
                  helper.make_node("Reshape", [f"{side}_norm", "heads"], [f"{side}_heads"]),
                  helper.make_node("Transpose", [f"{side}_heads"], [f"{side}_t"], perm=perm)]
    nodes += [helper.make_node("Reshape", ["v", "heads"], ["v_heads"]),
              helper.make_node("Transpose", ["v_heads"], ["v_t"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "rows"], ["y"])]
    # The scores too: the softmax alone would hide a wrong key shift (it adds a per-query constant).
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, T, C]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [B, HEADS, T, T])]
    if v_read_elsewhere:
        outputs.append(helper.make_tensor_value_info("v_heads", TensorProto.FLOAT, [B, T, HEADS, HS]))
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, C])], outputs)


@pytest.mark.parametrize("fused_v", [True, False], ids=["q/k/v fused", "q/k fused, v apart"])
def test_heads_first_runs_one_norm_and_one_transpose_and_computes_the_same(fused_v):
    model = _fused_attention(fused_v=fused_v)
    before = _run(model, _x())
    assert heads_first(GraphIndex(model.graph)) == 1
    assert heads_first(GraphIndex(model.graph)) == 0  # idempotent: nothing of the old pattern is left
    onnx.checker.check_model(model)
    ops = _ops(model)
    assert ops.count("LayerNormalization") == 1 and ops.count("Split") == (2 if fused_v else 1)
    perms = [list(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    # Heads to the front, the key's swap (and v's own transpose when it is apart), the output.
    assert perms == [[0, 2, 1, 3], [0, 1, 3, 2]] + ([] if fused_v else [[0, 2, 1, 3]]) + [[0, 2, 1, 3]]
    for got, ref in zip(_run(model, _x()), before):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["q and k norms differ in epsilon", "v's heads are read elsewhere"])
def test_heads_first_leaves_attention_it_cannot_rewrite_exactly(case):
    model = _fused_attention(k_epsilon=1e-3) if case.startswith("q and k") else _fused_attention(v_read_elsewhere=True)
    before = model.SerializeToString()
    assert heads_first(GraphIndex(model.graph)) == 0 and model.SerializeToString() == before
