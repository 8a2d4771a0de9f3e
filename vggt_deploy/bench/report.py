"""Benchmark reports: environment snapshot, JSON, CSV, Markdown table and plots.

The files of one report are written into a temporary folder and moved into
the results folder together, so an interrupted run leaves no partial report.
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
from vggt_deploy.outputs import OutputFolder

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
    """bench.json (targets + environment + settings), bench.csv, bench.md and two plots, all moved in together."""
    out_dir = Path(out_dir)
    with OutputFolder(out_dir) as tmp:
        paths = {"json": tmp / f"{stem}.json", "csv": tmp / f"{stem}.csv", "md": tmp / f"{stem}.md"}
        atomic_write_text(paths["json"], json.dumps({**meta, "targets": rows}, indent=1) + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[k for k, _ in COLUMNS] + ["reason"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(_flat(row))
        atomic_write_text(paths["csv"], buf.getvalue())
        atomic_write_text(paths["md"], markdown_table(rows) + "\n")
        paths.update(_plots(rows, tmp, stem))
    return {key: out_dir / path.name for key, path in paths.items()}


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

