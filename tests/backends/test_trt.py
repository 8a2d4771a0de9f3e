"""Everything around TensorRT that can be verified without it; the real build is marked `trt`."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.tensorrt.rewrite import to_fp16
from vggt_deploy.backends.tensorrt.settings import BuildOptions, plan_build
from vggt_deploy.backends.tensorrt.sidecar import check_sidecar, make_sidecar, read_sidecar, write_engine
from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import find_layers

SHAPES = {"images": (None, 3, 128, 128), "query_embeds": (None, 256)}
PRECISIONS = {"blocks.0.attn.q": "int8", "grounding.0.mlp.fc1": "fp32", "heads.box.mlp.0": "fp16"}
NODES = {"blocks.0.attn.q": "n_q", "grounding.0.mlp.fc1": "n_fc1", "heads.box.mlp.0": "n_box"}


def test_tensorrt_10_uses_flags_and_precision_constraints():
    s = plan_build(BuildOptions(int8=True, fp16=True, max_batch=4), "10.3.0", SHAPES, PRECISIONS, NODES, has_qdq=True)
    assert not s.strongly_typed and set(s.flags) == {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"}
    assert s.fp32_layers == ("grounding.0.mlp.fc1",) and s.fp16_nodes == ()
    assert s.profile["images"] == ((1, 3, 128, 128), (1, 3, 128, 128), (4, 3, 128, 128))
    assert s.profile["query_embeds"] == ((18, 256),) * 3


def test_tensorrt_11_is_strongly_typed_and_rewrites_fp16_into_the_graph():
    s = plan_build(BuildOptions(int8=True, fp16=True), "11.1.0", SHAPES, PRECISIONS, NODES, has_qdq=True)
    assert s.strongly_typed and s.flags == ()
    assert s.fp16_nodes == ("n_box",)  # int8 stays QDQ, fp32 stays fp32


@pytest.mark.parametrize("options, version, has_qdq, message", [
    (BuildOptions(int8=True), "10.3.0", False, "explicitly quantized"),
    (BuildOptions(dla_core=0), "11.0.0", True, "DLA builds are a TensorRT 10.x"),
    (BuildOptions(min_batch=4, opt_batch=2), "10.3.0", True, "--min-batch <= --opt-batch"),
    (BuildOptions(), "8.6.1", True, "too old"),
])
def test_impossible_builds_are_refused(options, version, has_qdq, message):
    with pytest.raises(UserError, match=message):
        plan_build(options, version, SHAPES, {}, {}, has_qdq)


def test_fp16_rewrite_runs_and_stays_close(tiny_export):
    model = onnx.load(str(tiny_export.fp32))
    nodes = [l.node for l in find_layers(model) if l.weight and l.op_type == "MatMul"]
    half = to_fp16(model, nodes)
    onnx.checker.check_model(half)
    casts = sum(n.op_type == "Cast" for n in half.graph.node) - sum(n.op_type == "Cast" for n in model.graph.node)
    assert casts >= 2 * len(nodes)
    fp16_weights = [t for t in half.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) >= len(nodes)
    path = tiny_export.fp32.parent / "half.onnx"
    onnx.save(half, str(path))
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    feeds = {"images": np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32), "query_embeds": queries}
    with OrtRunner(path) as a, OrtRunner(tiny_export.fp32) as b:
        diff = np.abs(a.infer(feeds)["logits"] - b.infer(feeds)["logits"]).max()  # (untrained boxes are constant)
    assert 0 < diff < 5e-3


def test_sidecar_round_trip_and_mismatch(tmp_path, tiny_export):
    engine = tmp_path / "m.engine"
    sidecar = make_sidecar("10.3.0", "Orin", "8.7", tiny_export.fp32, "abc", {"flags": ["INT8"]})
    write_engine(engine, b"\x00engine", sidecar)
    loaded = read_sidecar(engine)
    check_sidecar(engine, loaded, "10.3.0", "Orin", "8.7")
    with pytest.raises(UserError) as err:
        check_sidecar(engine, loaded, "10.7.0", "RTX 4090", "8.9")
    message = str(err.value)
    assert "built with TensorRT 10.3.0, running 10.7.0" in message and "compute capability 8.7" in message
    assert "rebuild it here" in message
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(UserError, match="sidecar missing"):
        read_sidecar(engine)


def test_build_trt_refuses_a_graph_that_breaks_tensorrt_rules(tiny_model_dir, tiny_plan_text, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(tiny_plan_text)
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", str(tiny_model_dir), "--plan", str(plan), "-o", str(tmp_path / "o")]).exit_code == 0
    result = runner.invoke(main, ["build-trt", "--int8", "--onnx", str(tmp_path / "o" / "model.qdq.onnx"), "-o", str(tmp_path / "e")])
    assert result.exit_code == 2 and "breaks TensorRT's rules" in result.output and "zero point type UINT8" in result.output


def _export_tensorrt_flavour(model_dir, plan_text, tmp_path):
    """The TensorRT-flavour QDQ export of the tiny model, in tmp_path/o."""
    plan = tmp_path / "p.yaml"
    plan.write_text(plan_text)
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["export", "--model", str(model_dir), "--plan", str(plan), "--target", "tensorrt",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_build_trt_without_tensorrt_says_what_to_install(tiny_model_dir, tiny_plan_text, tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; the missing-TensorRT message cannot be shown")
    except ImportError:
        pass
    runner = CliRunner()
    out = _export_tensorrt_flavour(tiny_model_dir, tiny_plan_text, tmp_path)
    result = runner.invoke(main, ["build-trt", "--int8", "--onnx", str(out / "model.qdq.onnx"), "-o", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: TensorRT is not installed")
    assert not (tmp_path / "e").exists()


@pytest.mark.trt
@pytest.mark.gpu
def test_build_and_run_an_int8_engine(tiny_model_dir, tiny_plan_text, tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    from vggt_deploy.backends.tensorrt.runner import TrtRunner

    runner = CliRunner()
    out = _export_tensorrt_flavour(tiny_model_dir, tiny_plan_text, tmp_path)
    engine = tmp_path / "m.engine"
    result = runner.invoke(main, ["build-trt", "--int8", "--fp16", "--onnx", str(out / "model.qdq.onnx"), "-o", str(engine),
                                  "--num-queries", "18"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.engine.json").read_text())["tensorrt"]
    queries = np.load(out / "queries.npy")
    with TrtRunner(engine) as trt_runner:
        boxes = trt_runner.infer({"images": np.zeros((2, 3, 32, 32), np.float32), "query_embeds": queries})["boxes"]
    assert boxes.shape == (2, 4, 4)


def test_a_plan_given_to_build_trt_overrides_the_recorded_precisions(tiny_export):
    from vggt_deploy.backends.tensorrt.build import layer_precisions
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.quant.resolved import resolve_plan

    model = onnx.load(str(tiny_export.fp32))
    plan = parse_plan("version: 1\ntarget: tensorrt\ndefault: {precision: fp16}\nrules:\n  - match: 'heads.*'\n"
                      "    precision: fp32\n")
    precisions = resolve_plan(plan, model).requested_precisions()
    assert precisions["heads.cls.fc"] == "fp32" and precisions["blocks.0.attn.q"] == "fp16"
    assert layer_precisions(model) == {}  # an FP32 export records none


def test_infer_with_an_engine_refuses_a_missing_sidecar(tiny_model_dir, tiny_data, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00")
    image = sorted((tiny_data / "images").iterdir())[0]
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_model_dir), "--engine", str(engine),
                                       "--image", str(image), "-q", "red circle"])
    assert result.exit_code == 2 and "sidecar missing" in result.output
