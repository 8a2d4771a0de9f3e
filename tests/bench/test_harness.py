import json

import numpy as np
from click.testing import CliRunner

from vggt_deploy.bench.flops import count_gflops
from vggt_deploy.bench.timing import LatencyStats, time_alternating
from vggt_deploy.cli import main


def test_bench_runs_every_target_and_reports_failures_as_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    bad = tmp_path / "bad.yaml"  # a plan written for a deeper model: the mixed targets fail, the rest run
    bad.write_text("version: 1\ndefault: {precision: int8}\nrules:\n  - match: 'blocks.9.*'\n    precision: fp32\n")
    result = CliRunner().invoke(main, [
        "bench", "--model", str(tiny_model_dir), "--eval-images", "4", "--rounds", "3", "--warmup", "1",
        "--threads", "1", "--build-dir", str(tmp_path / "build"), "--results-dir", str(out), "--plan", str(bad),
        "--json", "--targets", "torch-fp32,ort-fp32,ort-int8,ort-mixed,ov-bf16,ov-int8,ov-mixed"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: one JSON object on stdout, the table on stderr
    assert report == json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in report["targets"]}
    for name in ("ort-mixed", "ov-mixed"):
        assert rows[name]["status"] == "failed" and "matches no layer" in rows[name]["reason"]
    for name in ("torch-fp32", "ort-fp32", "ort-int8", "ov-bf16", "ov-int8"):
        row = rows[name]
        assert row["status"] == "ok", row
        for key in ("size_mb", "gflops", "fps", "map", "map50", "refexp_acc"):
            assert row[key] is not None, (name, key)
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    assert rows["ort-int8"]["size_mb"] < rows["ort-fp32"]["size_mb"]
    # Every row says what ran it and with which plan; OpenVINO runs the very same QDQ file.
    assert rows["ov-int8"]["runtime"].startswith("openvino ") and rows["ov-int8"]["plan"] == "int8"
    assert rows["ort-fp32"]["runtime"].startswith("onnxruntime ") and rows["ort-fp32"]["plan"] is None
    assert rows["ov-int8"]["file"] == rows["ort-int8"]["file"]
    assert abs(rows["ov-int8"]["map"] - rows["ort-int8"]["map"]) < 0.05
    assert report["matmul_peak_gops"]["int8"] > 0 and report["environment"]["onnxruntime"]
    for name in ("bench.json", "bench.csv", "bench.md", "bench_latency_vs_map.png", "bench_size_vs_map.png"):
        assert (out / name).is_file()


def test_min_map_fails_the_exit_code(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "bench", "--model", str(tiny_model_dir), "--eval-images", "4", "--rounds", "2", "--warmup", "0",
        "--build-dir", str(tmp_path / "build"), "--results-dir", str(tmp_path / "r"), "--targets", "torch-fp32",
        "--min-map", "0.99"])
    assert result.exit_code == 1


def test_gflops_of_a_known_graph():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64, 32), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert count_gflops(model) == 2 * 10 * 64 * 32 / 1e9


def test_alternating_timing_statistics():
    calls = {"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}
    stats = time_alternating(calls, warmup=1, rounds=9, burst=0)
    assert set(stats) == {"a", "b"} and all(s.rounds == 9 for s in stats.values())
    # Bursts: per round one untimed call that re-warms the target, then `burst` timed calls.
    counts = {"a": 0, "b": 0}
    calls = {k: (lambda k=k: counts.__setitem__(k, counts[k] + 1)) for k in counts}
    stats = time_alternating(calls, warmup=2, rounds=5, burst=3)
    assert all(s.rounds == 15 for s in stats.values()) and counts == {"a": 2 + 5 * 4, "b": 2 + 5 * 4}
    s = LatencyStats.from_samples([0.001, 0.002, 0.003], batch=2)
    assert s.p50 == 2.0 and s.fps == 1000.0


def test_batch_sweep_grows_latency_and_writes_benchmarks_md(tiny_export, tmp_path, monkeypatch):
    from vggt_deploy.bench import sweep
    from vggt_deploy.bench.benchmarks_doc import render_benchmarks
    from vggt_deploy.bench.sweep import sweep_batch, sweep_markdown

    pools = []

    def recorded(calls, **kwargs):  # the real timing, noting how many rows share each alternating pool
        pools.append(len(calls))
        return time_alternating(calls, **kwargs)

    monkeypatch.setattr(sweep, "time_alternating", recorded)
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    rows = sweep_batch(tiny_export.fp32, tiny_export.fp32, queries, 32, threads=1, rounds=5)
    assert pools == [len(rows)] == [20]  # every batch size and target side by side, so their ratios compare
    fp32 = [r for r in rows if r["target"] == "ort-fp32"]
    assert [r["batch"] for r in fp32] == [1, 2, 4, 8, 16]
    assert fp32[-1]["p50_ms"] > fp32[0]["p50_ms"]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sweep_batch.md").write_text(sweep_markdown("batch", rows))
    md = render_benchmarks(tmp_path / "results", tmp_path / "BENCHMARKS.md").read_text()
    assert "## Scaling with batch" in md and "| 16 | ort-fp32 |" in md


def test_unknown_targets_and_devices_are_refused_before_work(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model_dir), "--targets", "ort-mixd",
                                       "--build-dir", str(tmp_path / "b")])
    assert result.exit_code == 2 and "ort-mixd (did you mean ort-mixed?)" in result.output
    assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model_dir), "--device", "jetson"])
    assert result.exit_code == 2 and "not a Jetson" in result.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model_dir), "--device", "cuda",
                                           "--build-dir", str(tmp_path / "b2")])
        assert result.exit_code == 2 and "TensorRT is not installed" in result.output
        assert not (tmp_path / "b2").exists()


def test_capability_table_refuses_unsupported_combinations():
    import pytest

    from vggt_deploy.backends.capabilities import backend_for
    from vggt_deploy.errors import UserError

    assert backend_for("onnxruntime", "cpu", "int8").suffix == ".onnx"
    with pytest.raises(UserError, match="tensorrt does not run on cpu"):
        backend_for("tensorrt", "cpu", "int8")
    with pytest.raises(UserError, match="torch has no fp16 path"):
        backend_for("torch", "cpu", "fp16")


def test_tegrastats_power_parsing_and_jetson_detection(tmp_path):
    from vggt_deploy.bench.jetson import is_jetson, parse_power_mw

    orin = "RAM 2305/7620MB (lfb 2x4MB) CPU [1%@729] GR3D_FREQ 0% VDD_IN 4806mW/4806mW VDD_CPU_GPU_CV 1037mW/1037mW"
    nano = "RAM 1500/3964MB CPU [5%@1479] POM_5V_IN 3500/3400 POM_5V_GPU 0/0"
    assert parse_power_mw(orin) == 4806.0 and parse_power_mw(nano) == 3500.0
    assert parse_power_mw("RAM 1/2MB") is None
    assert not is_jetson(tmp_path / "none", tmp_path / "model")
    (tmp_path / "model").write_text("NVIDIA Jetson AGX Orin Developer Kit")
    assert is_jetson(tmp_path / "none", tmp_path / "model")
