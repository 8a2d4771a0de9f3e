"""Models whose weights live in an external data file: folding weight transposes file to file, and
calibrating and quantizing from the graph alone (the VGGT-1B path above 2 GB)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.errors import UserError
from vggt_deploy.graph.external_data import fold_weight_transposes
from vggt_deploy.graph.layers import find_layers
from vggt_deploy.graph.onnx_io import has_external_data, load_onnx


def _shared_weight_model(path):
    """x -> MatMul(x, Transpose(W)) twice (a weight shared by two uses, as the camera trunk's), plus a
    plain MatMul with its own weight; saved with every weight as external data."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "v")
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt1"], name="t1", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt1"], ["h1"], name="mm1"),
        helper.make_node("Transpose", ["w"], ["wt2"], name="t2"),
        helper.make_node("MatMul", ["h1", "wt2"], ["h2"], name="mm2"),
        helper.make_node("MatMul", ["h2", "v"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [w, v],
                              value_info=[helper.make_tensor_value_info("wt1", TensorProto.FLOAT, [8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return model


def test_folding_weight_transposes_keeps_the_outputs_and_drops_the_transposes(tmp_path):
    path = tmp_path / "m.onnx"
    _shared_weight_model(path)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    want = make_session(path, optimize=False).run(None, {"x": x})[0]
    size = (tmp_path / "m.onnx.data").stat().st_size
    assert fold_weight_transposes(path) == 1
    graph = onnx.load(str(path), load_external_data=False)
    assert "Transpose" not in {n.op_type for n in graph.graph.node} and has_external_data(graph)
    assert {l.weight for l in find_layers(graph)} == {"w", "v"}  # the quantizer sees both weights now
    got = make_session(path, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert (tmp_path / "m.onnx.data").stat().st_size <= size + 2 * 4096  # rewritten, not appended to
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary left
    assert fold_weight_transposes(path) == 0  # nothing left to fold: the files are not touched


def test_quantizing_from_the_graph_alone_equals_quantizing_the_loaded_model(tmp_path):
    # The memory-lean path: calibration reads the weights through the session and the sketches one
    # tensor at a time from the data file, so the ranges and the QDQ model are those of the whole model.
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.quant.qdq import quantize
    from vggt_deploy.quant.resolved import resolve_plan

    path = tmp_path / "m.onnx"
    _shared_weight_model(path)
    fold_weight_transposes(path)
    plan = parse_plan("version: 1\ntarget: onnxruntime-cpu\ncalibration: {method: auto, num_images: 8}\n"
                      "default: {precision: int8}\n", "p.yaml")
    images = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    x = images[:3]
    results = {}
    for kind, loaded in (("graph", False), ("whole", True)):
        fp32 = onnx.load(str(path), load_external_data=loaded)
        assert has_external_data(fp32) != loaded
        result = quantize(fp32, resolve_plan(plan, fp32), images, {}, "x", tmp_path / f"cache_{kind}",
                          fp32_path=path)
        choices = {t["tensor"]: t["range"] for t in result.report["auto_calibration"]["tensors"]}
        results[kind] = (choices, make_session(result.model.SerializeToString()).run(None, {"x": x})[0])
    assert results["graph"][0] == results["whole"][0] and len(results["graph"][0]) == 3
    np.testing.assert_array_equal(results["graph"][1], results["whole"][1])


def test_calibrating_in_passes_sees_every_tensor_whole(tmp_path, monkeypatch):
    # A model with external weights is calibrated a few tensors per pass (memory bound); each tensor
    # still sees every image, so its min/max (full_range) is that of one pass over everything.
    from vggt_deploy.quant import auto_calib

    path = tmp_path / "m.onnx"
    _shared_weight_model(path)
    fold_weight_transposes(path)
    graph = onnx.load(str(path), load_external_data=False)
    images = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    whole = auto_calib.auto_ranges(graph, images, "x", None, symmetric=False, weights_dir=tmp_path)
    passes = []
    real = auto_calib._pass
    monkeypatch.setattr(auto_calib, "_pass", lambda model, group, *a: passes.append(len(group)) or real(model, group, *a))
    split = auto_calib.auto_ranges(graph, images, "x", None, symmetric=False, weights_dir=tmp_path, pass_bytes=1)
    assert passes == [1] * len(whole[0])  # a byte budget of 1: one tensor per pass
    assert split[0].keys() == whole[0].keys() and len(split[1]) == len(whole[1]) == 3
    assert [d.full_range for d in split[1]] == [d.full_range for d in whole[1]]


def test_passes_are_cut_by_the_recorded_shapes_with_symbolic_frames():
    # VGGT-1B's shapes are recorded with symbols ("frames", "261*frames"): a pass holds what fits the
    # budget for the feed's frame count, so a few huge tensors (global attention, DPT heads at high
    # resolution) cannot land in one pass (a pass sized by averages was killed at 518 x 294).
    from vggt_deploy.quant.calib_passes import pass_groups

    def info(name, *dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))

    graph = helper.make_graph([], "g", [info("images", "frames", 3, 8, 8)], [info("out", "frames", 4)], value_info=[
        info("a", "frames", 10, 100), info("b", "261*frames", 100), info("c", "frames - 1", 1000), info("d", "bad(", 5)])
    model = helper.make_model(graph)
    feed = np.zeros((3, 3, 8, 8), np.float32)  # a 3-frame sequence
    sizes = {"a": 4 * 3 * 1000, "b": 4 * 783 * 100, "c": 4 * 2 * 1000}
    assert pass_groups(model, ["a", "b", "c"], feed, 10**9) == [["a", "b", "c"]]
    assert pass_groups(model, ["a", "b", "c"], feed, sizes["b"]) == [["a"], ["b"], ["c"]]
    assert pass_groups(model, ["a", "c", "b"], feed, sizes["a"] + sizes["c"]) == [["a", "c"], ["b"]]
    assert pass_groups(model, ["d", "x", "a"], feed, 16 * 4000) == [["d", "x", "a"]]  # unknown: budget / 16 each


@pytest.mark.parametrize("method, default, match", [
    ("entropy", "{precision: int8}", "entropy holds the whole model in memory"),
    ("auto", "{precision: int8, smoothing: {alpha: 0.5}}", "smoothing rewrites weights in memory"),
])
def test_what_needs_the_whole_model_in_memory_is_refused_for_the_graph_alone(tmp_path, method, default, match):
    from vggt_deploy.errors import UserError
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.quant.qdq import quantize
    from vggt_deploy.quant.resolved import resolve_plan

    path = tmp_path / "m.onnx"
    _shared_weight_model(path)
    plan = parse_plan(f"version: 1\ntarget: onnxruntime-cpu\ncalibration: {{method: {method}, num_images: 8}}\n"
                      f"default: {default}\n", "p.yaml")
    graph = onnx.load(str(path), load_external_data=False)
    images = np.random.default_rng(4).standard_normal((8, 8)).astype(np.float32)
    with pytest.raises(UserError, match=match):
        quantize(graph, resolve_plan(plan, graph), images, {}, "x", tmp_path / "cache", fp32_path=path)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # refused before any work


def test_the_graph_alone_is_checked_with_its_weights_left_on_disk(tmp_path):
    path = tmp_path / "m.onnx"
    _shared_weight_model(path)
    graph = load_onnx(path, external_data=False)
    assert has_external_data(graph) and not has_external_data(load_onnx(path))
    broken = onnx.load(str(path), load_external_data=False)
    broken.graph.node[0].op_type = "Frobnicate"
    onnx.save(broken, str(tmp_path / "bad.onnx"))  # the same external data file, beside it
    with pytest.raises(UserError, match=r"bad\.onnx: not a valid ONNX model .*Frobnicate"):
        load_onnx(tmp_path / "bad.onnx", external_data=False)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(UserError, match=r"m\.onnx: not a valid ONNX model .*m\.onnx\.data"):
        load_onnx(path, external_data=False)
