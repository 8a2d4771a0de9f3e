"""BENCHMARKS.md: every number in the reading notes is computed from the results files."""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vggt_deploy.bench.benchmarks_doc import render_benchmarks
from vggt_deploy.cli import main

NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def _target(name, p50, size, mAP, refexp, peak, description=""):
    return {"name": name, "status": "ok", "reason": "", "description": description, "size_mb": size, "gflops": 0.61,
            "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2}, "fps": 1000 / p50, "mem_mb": 91.5,
            "map": mAP, "map50": 0.93, "refexp_acc": refexp, "top1": 0.91, "top5": 0.99, "energy_mj": None,
            "achieved_gops": 55.5, "peak_fraction": peak}


def _results() -> dict:
    env = {"cores": 4, "cpu": "Test CPU", "cpu_flags": ["avx2", "fma"], "onnxruntime": "1.20.0", "gpu": None}
    bench = {"environment": env, "matmul_peak_gops": {"fp32": 150.5, "int8": 612.3},
             "settings": {"batch": 2, "device": "cpu", "command": "vggt-deploy bench --batch 2"},
             "targets": [_target("ort-fp32", 21.37, 41.93, 0.7431, 0.9512, 0.4177),
                         _target("ort-int8", 15.41, 11.27, 0.7316, 0.9389, 0.1483),
                         _target("ort-mixed", 17.89, 24.61, 0.7402, 0.9461, 0.1129, "mixed plan (mixed.yaml)")]}
    sweep = {"environment": env, "rows": [
        {"batch": b, "target": t, "p50_ms": p, "ms_per_image": p / b, "fps": 1000 * b / p, "peak_rss_mb": 99.1}
        for b, t, p in ((1, "ort-fp32", 12.13), (1, "ort-mixed", 10.71), (8, "ort-fp32", 71.37), (8, "ort-mixed", 47.93))]}
    layouts = (("per-channel everywhere", 0.1713, 9.13), ("per-tensor everywhere", 0.2947, 8.77),
               ("per-channel early, per-tensor late", 0.2311, 8.91))
    granularity = {"note": "synthetic", "environment": env, "rows": [
        {"variant": v, "changed": "", "fp32_map": 0.7431, "int8_map": 0.7431 - d / 100, "drop_points": d,
         "p50_ms": p, "fp32_p50_ms": 12.71, "size_mb": 11.3, "takeaway": ""} for v, d, p in layouts]}
    return {"bench": bench, "sweep_batch": sweep, "ablation_granularity": granularity}


def _write(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in results.items():
        (folder / f"{stem}.json").write_text(json.dumps(data))
    return folder


def _render(tmp_path: Path, results: dict, name: str = "a") -> str:
    folder = _write(tmp_path / name / "results", results)
    return render_benchmarks(folder, folder.parent / "BENCHMARKS.md").read_text()


def _notes(md: str) -> str:
    """The generated reading sections ('## Reading ...' up to the next other heading)."""
    keep, out = False, []
    for line in md.splitlines():
        if line.startswith("## "):
            keep = line.startswith("## Reading")
        if keep:
            out.append(line)
    return "\n".join(out)


def _one(pattern: str, text: str) -> re.Match:
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, text)
    return re.search(pattern, text)


def test_numbers_in_the_notes_are_computed_from_the_results(tmp_path):
    data = _results()
    notes = _notes(_render(tmp_path, data))
    t = {r["name"]: r for r in data["bench"]["targets"]}
    fp32, int8, mixed = t["ort-fp32"], t["ort-int8"], t["ort-mixed"]

    m = _one(r"runs ([\d.]+)x faster than ort-fp32 at batch (\d+) \(([\d.]+) vs ([\d.]+) ms\) and is ([\d.]+)x smaller",
             notes)
    assert m.group(1) == f"{fp32['latency_ms']['p50'] / mixed['latency_ms']['p50']:.2f}"
    assert int(m.group(2)) == data["bench"]["settings"]["batch"]
    assert m.group(5) == f"{fp32['size_mb'] / mixed['size_mb']:.1f}"
    m = _one(r"it loses ([\d.]+) mAP points", notes)
    assert m.group(1) == f"{(fp32['map'] - mixed['map']) * 100:.2f}"

    m = _one(r"reach (\d+)–(\d+)% of this CPU's int8 MatMul peak \((\d+) GOPS", notes)
    fractions = [int8["peak_fraction"] * 100, mixed["peak_fraction"] * 100]
    assert (m.group(1), m.group(2)) == (f"{min(fractions):.0f}", f"{max(fractions):.0f}")
    assert m.group(3) == f"{data['bench']['matmul_peak_gops']['int8']:.0f}"
    m = _one(r"ort-int8 ([\d.]+)x, ort-mixed ([\d.]+)x", notes)
    assert m.group(1) == f"{fp32['latency_ms']['p50'] / int8['latency_ms']['p50']:.2f}"

    p50 = {(r["batch"], r["target"]): r["p50_ms"] for r in data["sweep_batch"]["rows"]}
    m = _one(r"ort-mixed goes from ([\d.]+)x ort-fp32's speed at batch 1 to ([\d.]+)x at batch 8", notes)
    assert m.group(1) == f"{p50[(1, 'ort-fp32')] / p50[(1, 'ort-mixed')]:.2f}"
    assert m.group(2) == f"{p50[(8, 'ort-fp32')] / p50[(8, 'ort-mixed')]:.2f}"

    rows = data["ablation_granularity"]["rows"]
    drops = {r["variant"]: r["drop_points"] for r in rows}
    m = _one(r"the (\d+) layouts land within ([\d.]+) points of each other: (.+?) is the most accurate "
             r"\(loses ([\d.]+) points\), (.+?) the least", notes)
    assert int(m.group(1)) == len(rows)
    assert m.group(2) == f"{max(drops.values()) - min(drops.values()):.2f}"
    assert m.group(3) == min(drops, key=drops.get) and m.group(5) == max(drops, key=drops.get)
    assert m.group(4) == f"{min(drops.values()):.2f}"
    assert "does not beat per-channel everywhere" in notes  # 0.23 lost vs 0.17


def test_a_changed_measurement_changes_the_sentence(tmp_path):
    data = _results()
    before = _notes(_render(tmp_path, data, "before"))
    data["bench"]["targets"][2]["latency_ms"]["p50"] = 26.5  # ort-mixed now slower than ort-fp32
    after = _notes(_render(tmp_path, data, "after"))
    assert f"runs {21.37 / 17.89:.2f}x faster than ort-fp32" in before
    assert f"runs {26.5 / 21.37:.2f}x slower than ort-fp32" in after and "(26.50 vs 21.37 ms)" in after


def _perturbed(data, rng):
    if isinstance(data, dict):
        return {k: _perturbed(v, rng) for k, v in data.items()}
    if isinstance(data, list):
        return [_perturbed(v, rng) for v in data]
    if isinstance(data, float):
        return data * rng.uniform(1.3, 1.9)
    return data


def _literals(data, out: set) -> set:
    """Integers, list lengths (counts) and the numbers inside strings: what the notes may quote unchanged."""
    if isinstance(data, dict):
        for k, v in data.items():
            _literals(k, out)
            _literals(v, out)
    elif isinstance(data, list):
        out.add(str(len(data)))
        for v in data:
            _literals(v, out)
    elif isinstance(data, bool):
        pass
    elif isinstance(data, int):
        out.add(str(data))
    elif isinstance(data, str):
        out.update(NUMBER.findall(data))
    return out


def test_no_number_in_the_notes_is_a_constant(tmp_path):
    """Perturb every measured (float) value: a number that survives both perturbations was not computed."""
    data = _results()
    original = NUMBER.findall(_notes(_render(tmp_path, data, "base")))
    assert len(original) > 30
    survivors = set(original)
    for seed in (1, 2):
        changed = _perturbed(copy.deepcopy(data), np.random.default_rng(seed))
        survivors &= set(NUMBER.findall(_notes(_render(tmp_path, changed, f"seed{seed}"))))
    assert survivors <= _literals(data, set()), survivors - _literals(data, set())


def test_a_missing_file_omits_its_section(tmp_path):
    data = _results()
    full = _render(tmp_path, data, "full")
    assert "## Reading the analysis" in full and "**Granularity (a)**" in full and "batch sweep" in full
    del data["ablation_granularity"], data["sweep_batch"]
    md = _render(tmp_path, data, "partial")
    assert "## Reading the analysis" not in md and "Granularity" not in md and "sweep" not in md
    assert "## Reading the numbers" in md and "## Variants" in md
    del data["bench"]
    md = _render(tmp_path, data, "empty")
    assert "## Reading" not in md and "## Variants" not in md and md.startswith("# Benchmarks")


def _gpu_column(md: str) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(("| ort-", "| trt-"))]
    return [row.rstrip(" |").rsplit(" | ", 1)[1] for row in rows if row.count("|") == 9]


def test_the_gpu_cell_states_the_reason_from_the_run(tmp_path):
    data = _results()
    cells = _gpu_column(_render(tmp_path, data, "cpu"))
    assert cells == ["not measured: no CUDA device in this run (cpu profile)"] * 3
    data["bench"]["environment"]["gpu"] = "NVIDIA H100 80GB HBM3, 550.54"
    cells = _gpu_column(_render(tmp_path, data, "gpu-present"))
    assert all(c.startswith("not measured: the run used the cpu profile (NVIDIA H100") for c in cells)
    data["bench"]["settings"]["device"] = "cuda"
    data["bench"]["targets"].append(_target("trt-int8", 1.234, 11.2, 0.7309, 0.9391, None))
    md = _render(tmp_path, data, "cuda")
    assert _gpu_column(md) == ["- (CPU target)"] * 3 + ["1.23"]
    assert "GPU latency p50 ms (batch 2)" in md and "| trt-int8 |" in md


def test_gpu_torch_check_gets_its_own_section(tmp_path):
    data = {**_results(), "gpu_torch": {"rows": [
        {"name": "torch-fp32", "device": "NVIDIA H100 80GB HBM3", "p50_ms": 1.913, "dtype": "float32"},
        {"name": "torch-fp16", "device": "NVIDIA H100 80GB HBM3", "p50_ms": 1.207, "dtype": "float16"}]}}
    md = _render(tmp_path, data)
    assert "## GPU check: PyTorch on NVIDIA H100 80GB HBM3" in md
    assert "| torch-fp16 | float16 | 1.207 | NVIDIA H100 80GB HBM3 |" in md
    assert "GPU check" not in _render(tmp_path, _results(), "without")


def test_publish_copies_results_and_renders_beside_them(tmp_path):
    src = _write(tmp_path / "build" / "demo" / "results", _results())
    (src / "bench.md").write_text("| table |\n")
    dst = tmp_path / "repo" / "bench" / "results"
    _write(dst, {"sensitivity": {"kept": True}})  # published earlier by another command: stays
    result = CliRunner().invoke(main, ["bench-publish", "--from", str(src), "--to", str(dst)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dst.iterdir()) == sorted([p.name for p in src.iterdir()] + ["sensitivity.json"])
    assert "## Reading the numbers" in (dst.parent / "BENCHMARKS.md").read_text()
    same = CliRunner().invoke(main, ["bench-publish", "--from", str(src), "--to", str(src)])
    assert same.exit_code == 2 and "are the same folder" in same.output
    missing = CliRunner().invoke(main, ["bench-publish", "--from", str(tmp_path / "nope"), "--to", str(dst)])
    assert missing.exit_code == 2 and "no such results folder" in missing.output


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_writes_nothing_under_bench():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-n", "demo"], cwd=root, capture_output=True, text=True, check=True).stdout
    commands = [line for line in out.splitlines() if "vggt-deploy " in line and not line.startswith("touch")]
    assert len(commands) == 3, out
    for line in commands:
        tokens = line.split()
        assert not any(t == "bench" or t.startswith(("bench/", "./bench/")) for t in tokens[2:]), line
    bench_line = next(line for line in commands if line.split()[1] == "bench")
    tokens = bench_line.split()
    assert tokens[tokens.index("--results-dir") + 1].startswith("build/")
    assert tokens[tokens.index("--build-dir") + 1].startswith("build/")
