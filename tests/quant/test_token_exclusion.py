"""calibration.exclude_tokens: special-token rows left out of activation statistics (QuantVGGT, QVGGT)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.errors import UserError
from vggt_deploy.quant.auto_calib import TOKENS_PER_FRAME_KEY, auto_ranges, drop_token_rows, token_exclusion
from vggt_deploy.quant.plan import PlanError, TokenExclusion, parse_plan
from vggt_deploy.tuning.units import unit_plan

PLAN = """\
version: 1
target: onnxruntime-cpu
calibration: {{method: {method}, images: calib_data, num_images: 4{extra}}}
default: {{precision: int8, activations: static}}
"""


def _plan(method="auto", extra=""):
    return parse_plan(PLAN.format(method=method, extra=extra), "p.yaml")


def test_plan_reads_and_checks_exclude_tokens():
    plan = _plan(extra=", exclude_tokens: {first: 5, period: frame}")
    assert plan.calibration.exclude_tokens == TokenExclusion(5, "frame")
    assert _plan(extra=", exclude_tokens: {first: 1}").calibration.exclude_tokens == TokenExclusion(1, 0)
    assert _plan().calibration.exclude_tokens is None
    # The range cache is keyed by the calibration section: excluding rows is another calibration.
    assert plan.calibration.cache_key() != _plan().calibration.cache_key()
    with pytest.raises(PlanError, match=r"exclude_tokens.*needs method auto"):
        _plan("minmax", ", exclude_tokens: {first: 5}")
    with pytest.raises(PlanError, match=r"exclude_tokens.*needs first"):
        _plan(extra=", exclude_tokens: {period: 10}")
    with pytest.raises(PlanError, match=r"exclude_tokens\.period.*must exceed first"):
        _plan(extra=", exclude_tokens: {first: 5, period: 5}")
    with pytest.raises(PlanError, match=r"exclude_tokens.*unknown key"):
        _plan(extra=", exclude_tokens: {first: 5, rows: 3}")


def test_generated_plans_keep_the_exclusion():
    plan = _plan(extra=", exclude_tokens: {first: 5, period: frame}")
    again = unit_plan(plan, [], set(), [], None, "")
    assert parse_plan(again.text).calibration == plan.calibration


def test_rows_dropped_per_frame_and_per_global_sequence():
    frames = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3)  # frame attention: [frames, tokens, C]
    kept = drop_token_rows(frames, 2, 7)
    assert kept.shape == (2, 5, 3) and np.array_equal(kept, frames[:, 2:])
    seq = frames.reshape(1, 14, 3)  # global attention: every frame's tokens in a row
    kept = drop_token_rows(seq, 2, 7)
    assert kept.shape == (1, 10, 3) and np.array_equal(kept.reshape(2, 5, 3), frames[:, 2:])
    assert drop_token_rows(seq, 2, 0).shape == (1, 12, 3)  # period 0: only the axis' first rows
    odd = np.zeros((1, 9, 3), np.float32)
    assert drop_token_rows(odd, 2, 7) is odd  # no whole periods: kept whole


def _linear_model(tokens: int, channels: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(channels, channels)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, channels])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, channels])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_huge_special_token_no_longer_sets_the_range():
    model = _linear_model(tokens=6, channels=8)
    x = np.random.default_rng(1).normal(size=(4, 6, 8)).astype(np.float32)
    x[:, 0, 3] = 1000.0  # the camera/register token's massive channel
    whole, _ = auto_ranges(model, x, "x", None, symmetric=False)
    assert whole["x"][1] >= 1000.0
    masked, _ = auto_ranges(model, x, "x", None, symmetric=False, exclude_tokens=(1, 0))
    assert masked["x"][1] < 10.0
    assert np.isclose(masked["x"][1], x[:, 1:].max(), rtol=0.05)


def test_frame_period_comes_from_the_model_metadata():
    model = _linear_model(tokens=6, channels=8)
    plan = _plan(extra=", exclude_tokens: {first: 1, period: frame}")
    with pytest.raises(UserError, match=TOKENS_PER_FRAME_KEY):
        token_exclusion(model, plan.calibration)
    helper.set_model_props(model, {TOKENS_PER_FRAME_KEY: "3"})
    assert token_exclusion(model, plan.calibration) == (1, 3)
    assert token_exclusion(model, _plan().calibration) is None
