"""LayerNorm affine folding: exact in float, refused where real int8 error would grow, one node fewer in OpenVINO."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from int8_quant import int8_error, quantize_minmax, rewrite_plan, run
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.quant.norm_folding import apply_folds, fold_candidates, fold_norms
from vggt_deploy.quant.plan import PlanError
from vggt_deploy.quant.resolved import resolve_plan

D, T = 32, 24
MASSIVE = 5  # the channel of a "massive activation" in the realistic case

FOLD_ALL = '  - match: "*"\n    fold_norm: true'


def _plan(rules: str = FOLD_ALL):
    return rewrite_plan(rules, "openvino-cpu")


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ln_qkv(seed: int = 0, realistic: bool = False, residual: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm -> q, k, v Linears (MatMul + bias Add), as the exporter writes a pre-norm block.

    `realistic`: like a pretrained ViT, gamma nearly silences the massive-activation channel (whose
    normalized value is huge), so the LayerNorm output is easy to quantize and x̂ is not."""
    rng = np.random.default_rng(seed)
    gamma = 1 + 0.2 * rng.standard_normal(D)
    if realistic:
        gamma[MASSIVE] = 0.002
    inits = {"blocks.0.norm1.weight": gamma, "blocks.0.norm1.bias": 0.3 * rng.standard_normal(D)}
    nodes = [helper.make_node("LayerNormalization", ["x", "blocks.0.norm1.weight", "blocks.0.norm1.bias"], ["ln"],
                              name="norm1", axis=-1, epsilon=1e-5)]
    outputs = []
    for p in "qkv":
        inits[f"blocks.0.attn.{p}.weight"] = 0.2 * rng.standard_normal((D, D))
        inits[f"blocks.0.attn.{p}.bias"] = 0.1 * rng.standard_normal(D)
        nodes += [helper.make_node("MatMul", ["ln", f"blocks.0.attn.{p}.weight"], [f"{p}0"], name=f"attn_{p}"),
                  helper.make_node("Add", [f"{p}0", f"blocks.0.attn.{p}.bias"], [p], name=f"attn_{p}_bias")]
        outputs.append(_vi(p, [1, T, D]))
    if residual:
        nodes.append(helper.make_node("Add", ["ln", "x"], ["res"], name="residual"))
        outputs.append(_vi("res", [1, T, D]))
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, T, D])], outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _inputs(seed: int, n: int, realistic: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 1, T, D)).astype(np.float32)
    if realistic:
        x[..., MASSIVE] += 60.0  # one channel far above the rest, in every token
    return x


def _feeds(xs: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"x": x} for x in xs]


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return run(model, {"x": x})


def _init(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _norm_affine(model) -> tuple[np.ndarray, np.ndarray]:
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    return _init(model, norm.input[1]), _init(model, norm.input[2])


def test_folding_is_exact_and_leaves_the_norm_without_affine():
    model = _ln_qkv()
    before = model.SerializeToString()
    folded, report = fold_norms(model, resolve_plan(_plan(), model), _inputs(0, 6)[:, 0], "x")
    assert model.SerializeToString() == before  # the input model is not mutated
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in model.graph.node]
    x = _inputs(99, 1)[0]
    for a, b in zip(_run(model, x), _run(folded, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    gamma, beta = _norm_affine(folded)
    assert np.all(gamma == 1) and np.all(beta == 0)
    (row,) = report["folded"]
    assert row["tensor"] == "ln" and row["norm"] == "norm1" and report["skipped"] == []
    assert row["layers"] == ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"]
    assert 0.5 < row["error_ratio"] < 1.25


def test_a_norm_read_by_anything_but_linears_is_left_alone():
    model = _ln_qkv(residual=True)
    folded, report = fold_norms(model, resolve_plan(_plan(), model), _inputs(0, 2)[:, 0], "x")
    assert folded is model and report["folded"] == []
    (row,) = report["skipped"]
    assert "Add 'residual'" in row["reason"]


def test_every_reader_must_ask_for_folding():
    model = _ln_qkv()
    folds, skipped = fold_candidates(model, resolve_plan(_plan('  - match: "blocks.0.attn.q"\n    fold_norm: true'),
                                                         model))
    assert folds == [] and "blocks.0.attn.k, blocks.0.attn.v" in skipped[0]["reason"]


def test_the_guard_refuses_where_real_int8_error_would_grow(tmp_path):
    """A massive channel silenced by gamma: folding exposes it to the activation quantizer. The guard
    must refuse, and ONNX Runtime's real int8 quantization must agree that folding would hurt."""
    model = _ln_qkv(realistic=True)
    calib, test = _inputs(1, 8, realistic=True), _inputs(2, 4, realistic=True)
    kept, report = fold_norms(model, resolve_plan(_plan(), model), calib[:, 0], "x")
    assert kept is model and report["folded"] == []
    assert "raise the estimated int8 error" in report["skipped"][0]["reason"]
    forced = apply_folds(model, fold_candidates(model, resolve_plan(_plan(), model))[0])
    plain, folded = int8_error(model, _feeds(calib), _feeds(test), tmp_path / "plain"), int8_error(
        forced, _feeds(calib), _feeds(test), tmp_path / "folded")
    print(f"int8 relative error: LayerNorm kept {plain:.4f}, folded {folded:.4f}")
    assert folded > 1.5 * plain


def test_the_guard_lets_a_benign_norm_fold_at_no_real_cost(tmp_path):
    model = _ln_qkv()
    calib, test = _inputs(1, 8), _inputs(2, 4)
    folded_model, report = fold_norms(model, resolve_plan(_plan(), model), calib[:, 0], "x")
    assert len(report["folded"]) == 1
    plain, folded = int8_error(model, _feeds(calib), _feeds(test), tmp_path / "plain"), int8_error(
        folded_model, _feeds(calib), _feeds(test), tmp_path / "folded")
    assert folded < 1.25 * plain


def test_openvino_runs_a_folded_norm_and_its_quantizer_as_one_node(tmp_path):
    ov = pytest.importorskip("openvino")
    model = _ln_qkv()
    calib = _inputs(1, 4)
    folded, _ = fold_norms(model, resolve_plan(_plan(), model), calib[:, 0], "x")
    executed = {}
    for tag, m in (("plain", model), ("folded", folded)):
        q = quantize_minmax(m, _feeds(calib), tmp_path / tag)
        compiled = ov.Core().compile_model(ov.Core().read_model(q.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        ops = compiled.get_runtime_model().get_ordered_ops()
        kinds = [op.get_rt_info()["layerType"].astype(str) for op in ops]
        executed[tag] = [k for k in kinds if k not in ("Input", "Output", "Const")]
    # plain: MVN, then the affine and the quantizer as a separate Subgraph; folded: the MVN quantizes itself
    assert executed["plain"][:2] == ["MVN", "Subgraph"]
    assert executed["folded"][0] == "MVN" and executed["folded"][1] != "Subgraph"
    assert len(executed["folded"]) == len(executed["plain"]) - 1


@pytest.mark.parametrize("rule, problem", [
    ('  - match: "*"\n    fold_norm: "yes"', "fold_norm"),
    ('  - match: "*"\n    precision: fp32\n    fold_norm: true', "fold_norm lets the runtime fuse"),
])
def test_plan_fold_norm_is_checked(rule, problem):
    with pytest.raises(PlanError, match=problem):
        _plan(rule)
