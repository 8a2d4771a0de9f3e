"""A peer's cached quantized file is reused only when it was made from the same model, quantizer and images."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from vggt_deploy.bench.targets import PEER_KEY, BenchConfig, Builds, _cached_peer, _write_peer


def _identity(path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_the_key_follows_the_model_and_the_calibration_count(tiny_model_dir, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ntarget: onnxruntime-cpu\ncalibration: {method: minmax, num_images: 7}\n"
                    "default: {precision: int8}\n")
    builds = Builds(BenchConfig(model_dir=tiny_model_dir, build_dir=tmp_path / "b", mixed_plan=plan))
    key = builds.peer_key("onnxruntime", calibrated=True)
    assert key["calibration_images"] == 7 and len(builds.calibration_images()) == 7  # as many as the plan
    assert key["quantizer"] == "onnxruntime" and len(key["model_sha256"]) == 64
    assert "calibration_images" not in builds.peer_key("onnxruntime", calibrated=False)
    plan.write_text(plan.read_text().replace("num_images: 7", "num_images: 5"))
    assert builds.peer_key("onnxruntime", calibrated=True) != key


def test_a_peer_is_rebuilt_when_its_key_differs(tmp_path):
    out = tmp_path / "peer" / "model.onnx"
    key = {"quantizer": "onnxruntime", "calibration_images": 256}
    assert not _cached_peer(out, key)
    _write_peer(out, _identity, key)
    assert json.loads((out.parent / PEER_KEY).read_text()) == key
    assert _cached_peer(out, key)
    assert not _cached_peer(out, {**key, "calibration_images": 128})  # made from other images: stale
    (out.parent / PEER_KEY).unlink()
    assert not _cached_peer(out, key)  # made before keys existed: rebuilt once
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary file left behind
