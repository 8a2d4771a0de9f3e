"""The openvino-cpu plan target: bf16 layers (stored as float16), fp32 layers honoured, ORT refuses bf16."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.openvino.runner import OvRunner
from vggt_deploy.compile import export_from_model
from vggt_deploy.errors import UserError
from vggt_deploy.graph.onnx_io import get_metadata
from vggt_deploy.quant.plan import PlanError, parse_plan

HEAD = ("version: 1\ntarget: openvino-cpu\ncalibration: {method: minmax, images: calib_data, num_images: 4}\n"
        "default: {precision: int8, weight_granularity: per-channel, activations: static}\n")


def _feeds(out_dir, batch=2):
    images = np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return {"images": images, "query_embeds": np.load(out_dir / "queries.npy")}


def test_bf16_is_a_plan_precision_for_openvino_only():
    plan = parse_plan(HEAD + "rules:\n  - match: 'heads.*'\n    precision: bf16\n")
    assert plan.rules[0].overrides["precision"] == "bf16"
    with pytest.raises(PlanError, match="no fast bf16 path"):
        parse_plan(HEAD.replace("openvino-cpu", "onnxruntime-cpu") + "rules:\n  - match: 'heads.*'\n    precision: bf16\n")
    assert parse_plan(HEAD, target="tensorrt").target == "tensorrt"  # int8 everywhere is fine there
    with pytest.raises(PlanError, match="fp16"):
        parse_plan(HEAD + "rules:\n  - match: 'heads.*'\n    precision: bf16\n", target="tensorrt")
    with pytest.raises(PlanError, match="activations"):
        parse_plan(HEAD.replace("activations: static", "activations: dynamic"))


def test_bf16_layers_are_stored_as_float16_and_compute_the_same(tiny_model_dir, tmp_path):
    fp32_rules = export_from_model(tiny_model_dir, tmp_path / "fp32", parse_plan(
        HEAD + "rules:\n  - match: 'grounding.*'\n    precision: fp32\n  - match: 'heads.*'\n    precision: fp32\n"))
    bf16_rules = export_from_model(tiny_model_dir, tmp_path / "bf16", parse_plan(
        HEAD + "rules:\n  - match: 'grounding.*'\n    precision: bf16\n  - match: 'heads.*'\n    precision: bf16\n"))
    saved = bf16_rules.report["fp16_storage_bytes_saved"]
    assert saved > 0 and fp32_rules.report["fp16_storage_bytes_saved"] == 0
    assert bf16_rules.qdq.stat().st_size < fp32_rules.qdq.stat().st_size - saved * 0.9
    halves = [i for i in onnx.load(str(bf16_rules.qdq)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves  # the float layers' weights, each behind a Cast
    feeds = _feeds(tmp_path / "fp32")
    with OrtRunner(fp32_rules.qdq) as a, OrtRunner(bf16_rules.qdq) as b:
        out_a, out_b = a.infer(feeds), b.infer(feeds)
    for name in out_a:  # float16 storage moves outputs by far less than bf16 compute would
        assert np.allclose(out_a[name], out_b[name], atol=2e-2, rtol=2e-2), name
    # The fp32 layers are recorded for OpenVINO; bf16 layers are not.
    assert json.loads(get_metadata(onnx.load(str(fp32_rules.qdq)))["vggt.keep_fp32_nodes"])
    assert json.loads(get_metadata(onnx.load(str(bf16_rules.qdq)))["vggt.keep_fp32_nodes"]) == []


def test_openvino_honours_fp32_layers_by_running_f32(tiny_model_dir, tmp_path):
    out = export_from_model(tiny_model_dir, tmp_path / "x", parse_plan(
        HEAD + "rules:\n  - match: 'heads.*'\n    precision: fp32\n"))
    with OvRunner(out.qdq) as runner:
        runner.infer(_feeds(tmp_path / "x"))
        assert runner.precision == "f32" and "fp32" in runner.precision_note
    with pytest.raises(UserError, match="cannot honour"):
        OvRunner(out.qdq, precision="bf16").activate()


def test_an_all_float_plan_leaves_the_callers_model_alone(tiny_model_dir, tmp_path):
    """With nothing quantized, quantize() works on a copy: storing bf16 weights as float16 and writing the
    metadata used to rewrite the caller's FP32 model in place (a workbench then missed its range cache)."""
    from vggt_deploy.quant.qdq import quantize
    from vggt_deploy.quant.resolved import resolve_plan

    exported = export_from_model(tiny_model_dir, tmp_path / "fp32", parse_plan(HEAD))
    fp32 = onnx.load(str(exported.fp32))
    before = fp32.SerializeToString()
    plan = parse_plan(HEAD.replace("precision: int8", "precision: bf16"))
    result = quantize(fp32, resolve_plan(plan, fp32), None, {}, "images", tmp_path / "cache")
    assert fp32.SerializeToString() == before
    assert result.report["fp16_storage_bytes_saved"] > 0
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in result.model.graph.initializer)
