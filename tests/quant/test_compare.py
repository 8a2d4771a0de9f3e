"""`vggt-deploy compare`: per-layer error of a QDQ model against FP32, on real ONNX Runtime sessions."""

import json
import math

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.cli import main
from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import find_layers
from vggt_deploy.paths import resource
from vggt_deploy.quant.compare import compare_models, output_agreement
from vggt_deploy.quant.compare_inputs import extra_feeds, load_images, resolve_preprocess

PP = PreprocessConfig(size=8)
CLI_PP = ["--mean", "0.5", "--std", "0.25"]  # the test model has a static 8x8 input but no preprocess metadata


def _mlp() -> onnx.ModelProto:
    """images [1,3,8,8] -> Conv -> Relu -> flatten -> fc1 -> Relu -> fc2 -> logits [1,10] (fixed seed)."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=1.0):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["images", "conv.weight", "conv.bias"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu0"], name="relu0"),
        helper.make_node("Reshape", ["relu0", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc1.weight"], ["fc1_out"], name="fc1"),
        helper.make_node("Relu", ["fc1_out"], ["relu1"], name="relu1"),
        helper.make_node("MatMul", ["relu1", "fc2.weight"], ["logits"], name="fc2"),
    ]
    inits = [init("conv.weight", 4, 3, 3, 3, scale=0.3), init("conv.bias", 4, scale=0.1),
             numpy_helper.from_array(np.array([1, 256], np.int64), "flat_shape"),
             init("fc1.weight", 256, 32, scale=0.1), init("fc2.weight", 32, 10, scale=0.3)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _Reader:
    def __init__(self, n=8):
        rng = np.random.default_rng(1)
        self.feeds = iter([{"images": rng.uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(folder, FP32 path, QDQ path, damaged QDQ path): the damaged one has fc2's input scale 50x too large."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    folder = tmp_path_factory.mktemp("mlp")
    fp32 = folder / "model.onnx"
    onnx.save(_mlp(), str(fp32))
    qdq = folder / "model.qdq.onnx"
    quantize_static(str(fp32), str(qdq), _Reader(), quant_format=QuantFormat.QDQ)
    model = onnx.load(str(qdq))
    producer = {o: n for n in model.graph.node for o in n.output}
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    scale_name = producer[fc2.input[0]].input[1]  # the activation DequantizeLinear's scale (shared with its Q)
    scale = next(t for t in model.graph.initializer if t.name == scale_name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 50, scale_name))
    damaged = folder / "damaged.qdq.onnx"
    onnx.save(model, str(damaged))
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        cv2.imwrite(str(images / f"img{i}.png"), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    return folder, fp32, qdq, damaged


def _compare(fp32, qdq, folder):
    return compare_models(onnx.load(str(fp32)), onnx.load(str(qdq)), load_images(folder / "images", 16, PP), "images")


def test_identical_models_have_no_error(models):
    folder, fp32, _, _ = models
    result = _compare(fp32, fp32, folder)
    assert result.num_images == 3 and not result.not_found
    assert [r.name for r in result.layers] == ["conv", "fc1", "fc2"]  # all inf: graph order
    for r in result.layers:
        assert r.sqnr_db == math.inf and r.rel_l2 == 0 and r.max_abs == 0
        assert not r.quantized and r.precision == "fp32" and r.local_sqnr_db is None
    out = result.outputs["logits"]
    assert out["cosine"] == pytest.approx(1) and out["pearson_min"] == 1 and out["rel_l2"] == 0


def test_qdq_model_layers_and_local_error(models):
    folder, fp32, qdq, _ = models
    result = _compare(fp32, qdq, folder)
    names = {l.name for l in find_layers(onnx.load(str(fp32)))}
    assert {r.name for r in result.layers} == names == {"conv", "fc1", "fc2"}
    sqnrs = [r.sqnr_db for r in result.layers]
    assert sqnrs == sorted(sqnrs)  # worst first
    for r in result.layers:
        assert r.quantized and r.precision == "int8"
        assert 10 < r.sqnr_db < math.inf and 0 < r.rel_l2 < 0.3
        assert r.local_sqnr_db is not None and r.local_sqnr_db > 10
    conv = next(r for r in result.layers if r.name == "conv")
    assert conv.local_sqnr_db == pytest.approx(conv.sqnr_db, abs=1e-6)  # first layer: its inputs are exact anyway
    out = result.outputs["logits"]
    assert -1 <= out["pearson_min"] <= out["pearson_mean"] <= 1 and out["pearson_mean"] > 0.99
    json.dumps(result.to_json(), allow_nan=False)


def test_damaged_layer_ranks_worst_by_local_error(models):
    folder, fp32, _, damaged = models
    result = _compare(fp32, damaged, folder)
    worst_local = min(result.layers, key=lambda r: r.local_sqnr_db)
    assert worst_local.name == "fc2" and result.layers[0].name == "fc2"
    fc1 = next(r for r in result.layers if r.name == "fc1")
    assert worst_local.local_sqnr_db < fc1.local_sqnr_db - 10
    images = load_images(folder / "images", 16, PP)
    agreement = output_agreement(onnx.load(str(fp32)), onnx.load(str(damaged)), images, "images")
    assert agreement == result.outputs  # compare_models reports the same end-to-end numbers
    assert -1 <= agreement["logits"]["pearson_min"] <= agreement["logits"]["pearson_mean"] < 1


def test_cli_writes_json_and_png(models, tmp_path):
    folder, fp32, qdq, _ = models
    out = tmp_path / "report"
    args = ["compare", str(fp32), str(qdq), "--images", str(folder / "images"), *CLI_PP]
    result = CliRunner().invoke(main, [*args, "-o", str(out), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "fc2" in result.output and "end to end" in result.output and "1 more layers" in result.output
    data = json.loads((out / "compare.json").read_text())
    assert [l["rank"] for l in data["layers"]] == [1, 2, 3] and set(data["outputs"]) == {"logits"}
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    as_json = CliRunner().invoke(main, [*args, "--json", "--num-images", "2"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.stdout)
    assert parsed["num_images"] == 2 and len(parsed["layers"]) == 3


def _one_error(result, *needles):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]


def test_cli_bad_inputs(models, tmp_path):
    folder, fp32, qdq, _ = models
    run = CliRunner().invoke
    _one_error(run(main, ["compare", str(fp32), str(qdq), "--images", str(tmp_path / "nope"), *CLI_PP]),
               "image folder not found")
    _one_error(run(main, ["compare", str(fp32), str(qdq), "--images", str(folder / "images")]), "--mean", "--std")
    _one_error(run(main, ["compare", str(tmp_path / "x.onnx"), str(qdq), "--images", str(folder / "images")]),
               "not found")
    (tmp_path / "empty").mkdir()
    _one_error(run(main, ["compare", str(fp32), str(qdq), "--images", str(tmp_path / "empty"), *CLI_PP]),
               "no images")
    other = _mlp()
    other.graph.output[0].name = other.graph.node[-1].output[0] = "scores"
    onnx.save(other, str(tmp_path / "other.onnx"))
    _one_error(run(main, ["compare", str(fp32), str(tmp_path / "other.onnx"), "--images", str(folder / "images")]),
               "outputs")
    images = str(folder / "images")
    _one_error(run(main, ["compare", str(fp32), str(qdq), "--images", images, *CLI_PP, "-o", images]),
               "also an input")
    with pytest.raises(UserError, match="queries.npy"):
        extra_feeds([tmp_path / "model.onnx"], ["query_embeds"])


def test_tiny_vggt(tiny_export, tiny_plan_text, tmp_path):
    from vggt_deploy.graph.onnx_io import save_onnx
    from vggt_deploy.quant.calibrate import calibration_tensors
    from vggt_deploy.quant.plan import CalibrationSpec, parse_plan
    from vggt_deploy.quant.qdq import quantize
    from vggt_deploy.quant.resolved import resolve_plan

    fp32 = onnx.load(str(tiny_export.fp32))
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    calib = calibration_tensors(CalibrationSpec(method="minmax", num_images=4), PreprocessConfig(size=32))
    qdq = quantize(fp32, resolve_plan(parse_plan(tiny_plan_text), fp32), calib, {"query_embeds": queries}, "images",
                   tmp_path / "cache").model
    qdq_path = save_onnx(qdq, tmp_path / "model.qdq.onnx")  # no queries.npy here: found beside the FP32 file
    pp, order = resolve_preprocess([qdq, fp32], "images")
    assert pp.size == 32 and order == "rgb"
    result = compare_models(fp32, qdq, load_images(resource("calib_data"), 2, pp), "images",
                            extra_feeds([tiny_export.fp32, qdq_path], ["query_embeds"]))
    rows = {r.name: r for r in result.layers}
    assert not result.not_found and set(result.outputs) == {"boxes", "logits", "class_logits"}
    q = rows["blocks.0.attn.q"]
    assert q.quantized and q.precision == "int8" and q.local_sqnr_db is not None and q.sqnr_db > 10
    assert not rows["heads.cls.fc"].quantized and rows["heads.cls.fc"].precision == "fp32"
    assert rows["patch_embed.stem.0"].op_type == "Conv" and rows["patch_embed.stem.0"].local_sqnr_db is not None
    result = CliRunner().invoke(main, ["compare", str(tiny_export.fp32), str(qdq_path), "--images",
                                       str(resource("calib_data")), "--num-images", "1", "--top", "5"])
    assert result.exit_code == 0, result.output
    assert "blocks." in result.output and "class_logits" in result.output
