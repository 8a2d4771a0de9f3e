"""OpenVINO on the CPU: the runner against ONNX Runtime, build-ov folders, sidecar refusals, options."""

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vggt_deploy.backends.openvino import loader
from vggt_deploy.backends.openvino.settings import HINTS, PRECISIONS, OvOptions, compile_config
from vggt_deploy.errors import UserError

ov = pytest.importorskip("openvino")

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.openvino.runner import OvRunner
from vggt_deploy.cli import main

# Measured on the tiny model (20 seeds x batches 1, 2, 5; max |diff| / max |ORT output|):
#   FP32 ONNX, f32:  logits 3e-7 relative (2.9e-6 absolute), boxes and class logits exact to 1e-7
#   FP32 ONNX, bf16: logits 6.2e-3 relative (0.059 absolute), class logits 5.2e-3
#   QDQ ONNX,  f32:  logits 1.7e-3 relative (0.016 absolute: an int8 rounding step here and there)
BF16_REL = 2e-2
QDQ_REL = 1e-2
_BUILT: dict = {}


def _feeds(tiny_export, batch=2, seed=0):
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    images = np.random.default_rng(seed).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return {"images": images, "query_embeds": queries}


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def qdq_file(tiny_model_dir, tiny_plan_text, tmp_path_factory):
    """The tiny model's calibrated QDQ ONNX (exported once per session)."""
    if "qdq" not in _BUILT:
        from vggt_deploy.compile import export_from_model
        from vggt_deploy.quant.plan import parse_plan

        plan = parse_plan(tiny_plan_text, "tiny.yaml")
        out = export_from_model(tiny_model_dir, tmp_path_factory.mktemp("ov-qdq"), plan)
        _BUILT["qdq"] = out.qdq
    return _BUILT["qdq"]


@pytest.fixture()
def built(qdq_file, tmp_path_factory):
    """A build-ov folder of the QDQ model (f32, batches 1 and 2), written once through the CLI."""
    if "folder" not in _BUILT:
        out = tmp_path_factory.mktemp("ov-build") / "ov"
        result = _run("build-ov", "--onnx", qdq_file, "-o", out, "--precision", "f32", "--batch-size", 1,
                      "--batch-size", 2)
        assert result.exit_code == 0, result.output
        _BUILT["folder"], _BUILT["output"] = out, result.output
        _BUILT["blobs"] = len(list((out / "cache").iterdir()))  # before other tests compile more shapes there
    return _BUILT["folder"]


def test_fp32_onnx_matches_onnx_runtime(tiny_export):
    feeds = _feeds(tiny_export)
    with OrtRunner(tiny_export.fp32) as ort, OvRunner(tiny_export.fp32, precision="f32") as f32, \
            OvRunner(tiny_export.fp32, precision="bf16") as bf16:
        ref, a, b = ort.infer(feeds), f32.infer(feeds), bf16.infer(feeds)
        assert f32.config["INFERENCE_PRECISION_HINT"] == "f32" and bf16.config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert set(a) == set(b) == set(ref) == {"boxes", "logits", "class_logits"}
    for key in ref:
        assert a[key].shape == ref[key].shape and a[key].dtype == np.float32
        assert np.abs(a[key] - ref[key]).max() < 1e-4, key
        assert _rel(b[key], ref[key]) < BF16_REL, key
    assert np.abs(b["boxes"] - ref["boxes"]).max() < 2e-2


def test_qdq_onnx_runs_int8_kernels_and_matches_onnx_runtime(tiny_export, qdq_file):
    with OrtRunner(qdq_file) as ort, OvRunner(qdq_file, precision="f32") as runner, \
            OvRunner(qdq_file, precision="f32", fold_zero_points=False, rewrite_graph=False) as kept:
        for batch, seed in ((1, 0), (3, 1)):
            feeds = _feeds(tiny_export, batch, seed)
            ref, out, unfolded = ort.infer(feeds), runner.infer(feeds), kept.infer(feeds)
            for key in ref:
                assert _rel(out[key], ref[key]) < QDQ_REL, key
                assert _rel(unfolded[key], ref[key]) < QDQ_REL, key
        assert runner.fold_report.folded >= 10 and kept.fold_report is None  # zero points folded by default
        assert runner.rewrite_report.total >= 3 and kept.rewrite_report is None  # and the graph rewritten
        # Batch 3 compiled from the lowering without heads_first, whose Splits are free at batch 1 only.
        assert runner.rewrite_report.heads_first >= 1 and runner.batched_rewrite_report.heads_first == 0
        assert runner.batched_rewrite_report.fused_matmuls == runner.rewrite_report.fused_matmuls
        compiled = next(iter(runner.compiled.values()))[0]
        precisions = {op.get_rt_info()["runtimePrecision"].astype(str)
                      for op in compiled.get_runtime_model().get_ordered_ops()
                      if op.get_rt_info()["layerType"].astype(str).startswith(("FullyConnected", "Convolution", "MatMul"))}
    assert precisions & {"u8", "i8"}, precisions  # QDQ folded into int8 kernels, not run as float
    assert runner.metadata["vggt.target"] == "onnxruntime-cpu"


def test_static_shapes_compile_per_batch_and_dynamic_once(tiny_export):
    one, three = _feeds(tiny_export, 1), _feeds(tiny_export, 3, seed=1)
    with OvRunner(tiny_export.fp32, precision="f32") as static, \
            OvRunner(tiny_export.fp32, precision="f32", static_shapes=False) as dynamic:
        assert list(dynamic.compiled) == [None]  # compiled at activation
        assert not static.compiled  # lazily, per shape set
        results = [(static.infer(f), dynamic.infer(f)) for f in (one, three, one)]
        assert len(static.compiled) == 2 and list(dynamic.compiled) == [None]
        assert static.input_spec["images"][1] == (None, 3, 32, 32)
    for s, d in results:
        assert np.abs(s["logits"] - d["logits"]).max() < 1e-4
    assert results[1][0]["boxes"].shape == (3, 4, 4)


def test_build_ov_writes_a_folder_whose_cache_survives_the_move(built, qdq_file, tiny_export):
    assert {p.name for p in built.iterdir()} == {"model.xml", "model.bin", "model.json", "cache"}
    assert _BUILT["blobs"] == 2  # one blob per batch size
    side = json.loads((built / "model.json").read_text())
    assert side["openvino"] == ov.__version__ and side["precision"] == "f32" and side["batch_sizes"] == [1, 2]
    assert side["target"] == "onnxruntime-cpu" and side["plan_hash"] and side["layer_precisions"]
    assert side["options"]["static_shapes"] and set(side["compile_ms"]) == {"1", "2"}
    assert side["options"]["fold_zero_points"] and side["zero_points_folded"] >= 10
    assert "folded the zero points of" in _BUILT["output"]
    assert side["options"]["rewrite_graph"] and side["graph_rewrites"]["fused_matmuls"] >= 1
    assert side["graph_rewrites"]["heads_first"] == 0  # one IR for batches 1 and 2: no batch-1-only rewrite
    assert "rewrote the graph for OpenVINO" in _BUILT["output"]
    assert side["ir_size_mb"] > 0 and "IR" in _BUILT["output"] and "batch 2 in" in _BUILT["output"]
    feeds = _feeds(tiny_export, 2)
    with OvRunner(built) as folder, OvRunner(qdq_file, precision="f32") as plain:
        a, b = folder.infer(feeds), plain.infer(feeds)
        assert folder.precision == "f32"  # the sidecar's options are the defaults
        # The blobs were compiled in the staging folder, then renamed into place: still hits.
        assert list(folder.loaded_from_cache.values()) == [True]
    with OvRunner(built / "model.xml", precision="f32") as ir:  # the IR alone, without the sidecar
        c = ir.infer(feeds)
    for key in a:
        assert np.abs(a[key] - b[key]).max() < 1e-3, key
        assert np.abs(a[key] - c[key]).max() < 1e-6, key


def test_a_folder_for_batch_one_alone_takes_the_batch_one_rewrites(qdq_file, tiny_export, tmp_path):
    result = _run("build-ov", "--onnx", qdq_file, "-o", tmp_path / "one", "--precision", "f32")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "one" / "model.json").read_text())
    assert side["batch_sizes"] == [1] and side["graph_rewrites"]["heads_first"] >= 1
    assert "moved to head-major layout" in result.output
    feeds = _feeds(tiny_export, 1)
    with OvRunner(tmp_path / "one") as one, OrtRunner(qdq_file) as ort:
        out, ref = one.infer(feeds), ort.infer(feeds)
    for key in ref:
        assert _rel(out[key], ref[key]) < QDQ_REL, key


def test_keep_zero_points_builds_the_file_as_it_is(qdq_file, tiny_export, tmp_path):
    result = _run("build-ov", "--onnx", qdq_file, "-o", tmp_path / "kept", "--precision", "f32", "--keep-zero-points",
                  "--no-rewrites")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "kept" / "model.json").read_text())
    assert side["zero_points_folded"] == 0 and side["options"]["fold_zero_points"] is False
    assert side["graph_rewrites"] == {} and side["options"]["rewrite_graph"] is False
    assert "folded" not in result.output and "rewrote" not in result.output
    feeds = _feeds(tiny_export, 1)
    with OvRunner(tmp_path / "kept") as kept, OrtRunner(qdq_file) as ort:
        out, ref = kept.infer(feeds), ort.infer(feeds)
    for key in ref:
        assert _rel(out[key], ref[key]) < QDQ_REL, key


def test_eval_and_infer_run_a_build_ov_folder(built, tiny_model_dir, tiny_data, tmp_path):
    result = _run("eval", "--model", tiny_model_dir, "--openvino", built, "--data", tiny_data, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["model"] == str(built) and metrics["num_images"] == 8
    image = min((tiny_data / "images").iterdir())
    result = _run("infer", "--model", tiny_model_dir, "--openvino", built, "--image", image, "-q", "red circle",
                  "-o", tmp_path / "infer")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "infer" / f"{image.stem}.json").read_text())[0]["query"] == "red circle"


@pytest.mark.parametrize("field, value, message", [
    ("openvino", "2024.0.0-0000-deadbeef", "built with OpenVINO 2024.0.0"),
    ("source_sha256", "0" * 64, "has changed since the build"),
    ("cpu_flags", ["avx512_fp16", "amx_tile"], "CPU flags differ"),
])
def test_a_mismatched_folder_is_refused(built, tiny_model_dir, tiny_data, tmp_path, field, value, message):
    folder = tmp_path / "tampered"
    shutil.copytree(built, folder)
    side = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**side, field: value}))
    with pytest.raises(UserError, match=message):
        OvRunner(folder).activate()
    result = _run("eval", "--model", tiny_model_dir, "--openvino", folder, "--data", tiny_data, "--json")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_bad_outputs_and_inputs_are_refused(qdq_file, tmp_path):
    result = _run("build-ov", "--onnx", qdq_file, "-o", qdq_file)
    assert result.exit_code == 2 and "also an input" in result.output
    result = _run("build-ov", "--onnx", qdq_file, "-o", qdq_file.parent)
    assert result.exit_code == 2 and "holds the input" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = _run("build-ov", "--onnx", qdq_file, "-o", busy)
    assert result.exit_code == 2 and "did not write" in result.output and (busy / "notes.txt").read_text() == "mine"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    result = _run("build-ov", "--onnx", junk, "-o", tmp_path / "o")
    assert result.exit_code == 2 and "junk.onnx: not a valid ONNX model" in result.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="junk.onnx: OpenVINO cannot read it"):
        OvRunner(junk).activate()
    with pytest.raises(UserError, match="not found"):
        OvRunner(tmp_path / "missing.onnx").activate()
    with pytest.raises(UserError, match="no model.json"):
        OvRunner(tmp_path).activate()


def test_options_are_validated_and_mapped():
    assert PRECISIONS == ("f32", "bf16") and HINTS == ("latency", "throughput")
    for bad in ({"precision": "fp16"}, {"hint": "fast"}, {"threads": 0}, {"streams": -1}, {"threads": True},
                {"static_shapes": "yes"}):
        with pytest.raises(UserError):
            OvOptions(**bad)
    with pytest.raises(UserError):
        OvRunner("x.onnx", hint="fast")
    assert compile_config(OvOptions(), "bf16") == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16",
                                                   "NUM_STREAMS": 1}
    assert compile_config(OvOptions(hint="throughput", threads=4), "f32") == {
        "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 4}
    assert compile_config(OvOptions(hint="throughput", streams=2), "f32")["NUM_STREAMS"] == 2
    assert OvOptions.from_dict(OvOptions(precision="f32", threads=2).to_dict()) == OvOptions(precision="f32", threads=2)
    with pytest.raises(UserError):
        compile_config(OvOptions(), "int8")


def test_default_precision_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(loader, "ov_capabilities", lambda: ("FP32", "BF16", "INT8"))
    monkeypatch.setattr(loader, "cpu_flags", lambda: ["avx2", "avx512_bf16", "avx512f"])
    assert loader.default_precision() == "bf16"
    monkeypatch.setattr(loader, "cpu_flags", lambda: ["amx_bf16", "amx_tile"])
    assert loader.default_precision() == "bf16"
    monkeypatch.setattr(loader, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_vnni"])
    assert loader.default_precision() == "f32"
    monkeypatch.setattr(loader, "cpu_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(loader, "ov_capabilities", lambda: ("FP32", "INT8"))
    assert loader.default_precision() == "f32"
    with pytest.raises(UserError, match="no bf16 support"):
        loader.check_precision("bf16")


def test_cpu_flags_from_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 "
                    "amx_tile avx_vnni fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(loader, "CPUINFO", info)
    assert loader.cpu_flags() == ["amx_tile", "avx2", "avx512_bf16", "avx512f", "avx_vnni", "fma"]
    assert loader.cpu_name() == "Test CPU 9000"
    monkeypatch.setattr(loader, "CPUINFO", tmp_path / "missing")
    assert loader.cpu_flags() == []


def test_missing_openvino_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UserError, match="OpenVINO is not installed: pip install openvino"):
        loader.import_openvino()


def test_capability_table_lists_openvino():
    from vggt_deploy.backends.capabilities import backend_for

    assert backend_for("openvino", "cpu", "bf16").suffix == ".xml"
    with pytest.raises(UserError):
        backend_for("openvino", "cuda", "int8")
