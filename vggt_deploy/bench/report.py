"""Benchmark reports: environment snapshot, JSON, CSV, Markdown table and plots.

Files are written to temporary names and renamed, so an interrupted run never
leaves a half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from vggt_deploy.fileio import atomic_save_figure, atomic_write_text

COLUMNS = [("name", "Target"), ("status", "Status"), ("size_mb", "Size MB"), ("gflops", "GFLOPs"),
           ("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms"), ("fps", "FPS"), ("mem_mb", "Peak RSS MB"),
           ("map", "mAP"), ("map50", "mAP50"), ("refexp_acc", "RefExp"), ("top1", "Top-1"), ("top5", "Top-5"),
           ("energy_mj", "mJ/img"), ("achieved_gops", "GOPS"), ("peak_fraction", "of peak")]


def environment() -> dict:
    """Versions and hardware facts that decide whether two results are comparable."""
    env = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "platform": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "")
        flags = next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), [])
        env["cpu"] = model
        env["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "neon", "asimd")))
    except OSError:
        env["cpu"] = platform.processor()
    try:
        from vggt_deploy.bench.jetson import board_state, is_jetson

        if is_jetson():
            env["jetson"] = board_state()
    except OSError:
        pass
    for pkg in ("torch", "onnx", "onnxruntime", "numpy", "tensorrt"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:
            env[pkg] = None
    try:
        env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["gpu"] = None
    return env


def _flat(row: dict) -> dict:
    return {**row, **{k: row.get("latency_ms", {}).get(k) for k in ("p50", "p90", "p99")}}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        flat = _flat(row)
        cells = [_fmt(flat.get(k)) if flat.get("status") == "ok" or k in ("name", "status") else "-" for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        lines.append(f"\n- {r['name']} failed: {r['reason']}")
    return "\n".join(lines)


def write_reports(rows: list[dict], meta: dict, out_dir: Path, stem: str = "bench") -> dict[str, Path]:
    """bench.json (targets + environment + settings), bench.csv, bench.md and two plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md"}
    atomic_write_text(paths["json"], json.dumps({**meta, "targets": rows}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[k for k, _ in COLUMNS] + ["reason"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(_flat(row))
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], markdown_table(rows) + "\n")
    paths.update(_plots(rows, out_dir, stem))
    return paths


def _plots(rows: list[dict], out_dir: Path, stem: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("map") is not None]
    out = {}
    for key, xlabel, xget in (("latency", "latency p50 (ms)", lambda r: r["latency_ms"]["p50"]),
                              ("size", "size (MB)", lambda r: r["size_mb"])):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in ok:
            ax.scatter(xget(r), r["map"])
            ax.annotate(r["name"], (xget(r), r["map"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP@[.5:.95]")
        ax.grid(alpha=0.3)
        ax.set_title(f"{key} vs mAP")
        fig.tight_layout()
        path = out_dir / f"{stem}_{key}_vs_map.png"
        atomic_save_figure(fig, path)
        plt.close(fig)
        out[f"plot_{key}"] = path
    return out


def render_benchmarks(results_dir: Path, out_path: Path) -> Path:
    """bench/BENCHMARKS.md from whatever result files exist (main table, sweeps, quantization accuracy)."""
    parts = ["# Benchmarks", "",
             "Generated by `vggt-deploy bench` from the files in `bench/results/`; every number below is measured,",
             "on the machine described under Environment. Medians of alternating timed rounds; ratios only",
             "between rows of one run.", ""]
    notes = results_dir / "notes.md"  # hand-written reading of the numbers, kept across re-renders
    if notes.is_file():
        parts += [notes.read_text().strip(), ""]
    main_json = results_dir / "bench.json"
    if main_json.is_file():
        data = json.loads(main_json.read_text())
        rows = data["targets"]
        parts += ["## Variants (the seed's reporting table)", "",
                  "| variant | top-1 / top-5 | grounding mAP@[.5:.95] (mAP@.5) | RefExp acc | size MB | GFLOPs | "
                  "CPU latency p50 ms (batch " + str(data["settings"]["batch"]) + ") | GPU latency |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["status"] != "ok":
                parts.append(f"| {r['name']} | failed: {r['reason']} | | | | | | |")
                continue
            parts.append(f"| {r['name']} | {r['top1']:.3f} / {r['top5']:.3f} | {r['map']:.4f} ({r['map50']:.4f}) | "
                         f"{r['refexp_acc']:.4f} | {r['size_mb']:.2f} | {r['gflops']:.3f} | {r['latency_ms']['p50']:.2f} | "
                         "not measured (no GPU on this machine) |")
        parts += ["", "Full table (p90/p99, FPS, memory, achieved GOPS and fraction of this CPU's MatMul peak):", "",
                  markdown_table(rows), "",
                  f"MatMul peak measured in the same run: {data.get('matmul_peak_gops', {})} GOPS.", "",
                  "![latency vs mAP](results/bench_latency_vs_map.png) ![size vs mAP](results/bench_size_vs_map.png)", "",
                  "Reproduce: `" + data["settings"].get("command", "vggt-deploy bench") + "`", "",
                  "### Environment", "", "```", json.dumps(data["environment"], indent=1), "```", ""]
    quant = results_dir / "quant_accuracy.md"
    if quant.is_file():
        parts += ["## Quantization accuracy (ONNX Runtime, eval split)", "", quant.read_text().strip(), "",
                  "Reproduce: `python bench/quant_accuracy.py`", ""]
    for kind in ("batch", "resolution"):
        path = results_dir / f"sweep_{kind}.md"
        if path.is_file():
            parts += [f"## Scaling with {kind}", "", path.read_text().strip(), "",
                      f"Reproduce: `vggt-deploy bench --sweep {kind}`", ""]
    parts += _analysis_sections(results_dir)
    atomic_write_text(out_path, "\n".join(parts) + "\n")
    return out_path


# (file stem, heading, reproduce command); a section appears when its Markdown file exists.
ANALYSIS_SECTIONS = [
    ("sensitivity", "## Sensitivity: which units to keep in higher precision", "vggt-deploy sensitivity -o bench/results"),
    ("auto_plan", "## Automatic plan under an accuracy budget (plan: results/auto_plan.yaml)",
     "vggt-deploy plan auto --max-map-drop 0.003 -o bench/results/auto_plan.yaml"),
    ("ablation_granularity", "## Ablation (a): weight granularity per stage", "python bench/ablations/granularity.py"),
    ("ablation_calibration", "## Ablation (b): calibration method and number of images",
     "python bench/ablations/calibration.py"),
    ("ablation_grounding", "## Ablation (c, d): number and placement of grounding tokens, 3 seeds",
     "python bench/ablations/grounding_tokens.py train && python bench/ablations/grounding_tokens.py report"),
    ("limitations_size", "## Limitation: small objects", "python bench/ablations/limitations.py"),
    ("limitations_domain", "## Limitation: domain shift and recalibration", "python bench/ablations/limitations.py"),
]


def _analysis_sections(results_dir: Path) -> list[str]:
    parts = []
    for stem, heading, command in ANALYSIS_SECTIONS:
        md = results_dir / f"{stem}.md"
        if not md.is_file():
            continue
        parts += [heading, "", md.read_text().strip(), ""]
        if (results_dir / f"{stem}.png").is_file():
            parts += [f"![{stem}](results/{stem}.png)", ""]
        parts += [f"Reproduce: `{command}`", ""]
    return parts
