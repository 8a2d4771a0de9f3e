"""What every ablation script shares: export + quantize + evaluate variants, aggregate, write tables.

Every number comes from the product's own path: `export_from_model` (the same
export and QDQ placement as `vggt-deploy export`), ONNX Runtime sessions, and
the pycocotools evaluation of `vggt-deploy eval`. Latency is the batch-1
median over alternating rounds of all variants of one model, in one process.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

RESULTS = Path("bench") / "results"  # the checkout's recorded results, relative to where the scripts run


def eval_variants(model_dir: Path, variants: dict[str, str | None], work: Path, eval_images: int = 1000,
                  data_dir: Path | None = None, rounds: int = 30) -> dict:
    """Score each variant (label -> plan YAML text, None for FP32) of one model; flat dict of results."""
    from vggt_deploy.backends.onnxruntime.runner import OrtRunner
    from vggt_deploy.bench.evaluate import evaluate, runner_infer
    from vggt_deploy.compile import export_from_model
    from vggt_deploy.data.coco import load_coco, synthetic_split
    from vggt_deploy.model.io import load_model
    from vggt_deploy.quant.plan import parse_plan

    loaded = load_model(model_dir)
    dataset = load_coco(data_dir or synthetic_split("eval", eval_images))
    files, out = {}, {}
    for label, text in variants.items():
        plan = parse_plan(text, source=f"<{label}>") if text else None
        result = export_from_model(Path(model_dir), work / label.replace(" ", "_"), plan)
        files[label] = result.qdq or result.fp32
    for label, path in files.items():
        with OrtRunner(path, name=label) as runner:
            m = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=32, progress=False)
        for key in ("map", "map50", "map_small", "map_medium", "map_large", "refexp_acc"):
            out[f"{label}_{key}"] = float(m[key])
        out[f"{label}_size_mb"] = path.stat().st_size / 1e6
    if rounds:
        for label, p50 in time_files(files, loaded.model.cfg.image_size, rounds).items():
            out[f"{label}_p50_ms"] = p50
    return out


def time_files(files: dict[str, Path], image_size: int, rounds: int = 30) -> dict[str, float]:
    """Batch-1 median latency (ms) of ONNX files, all timed in alternating rounds in one process.

    Each file is fed its own export's query embeddings (queries.npy beside it).
    """
    from vggt_deploy.bench.timing import time_onnx_files

    image = np.zeros((1, 3, image_size, image_size), np.float32)
    feeds = {label: {"images": image, "query_embeds": np.load(Path(path).parent / "queries.npy")}
             for label, path in files.items()}
    return {label: s.p50 for label, s in time_onnx_files(files, feeds, warmup=5, rounds=rounds).items()}


def mean_std(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def lost(drop_points: float) -> str:
    """'loses 0.12 points' / 'gains 0.05 points' for a drop in mAP points."""
    return f"{'loses' if drop_points >= 0 else 'gains'} {abs(drop_points):.2f} points"


def _cell(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.4f} ± {value['std']:.4f}" if abs(value["mean"]) < 10 else \
            f"{value['mean']:.2f} ± {value['std']:.2f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def write_table(stem: str, rows: list[dict], columns: list[tuple[str, str]], note: str = "",
                results: Path = RESULTS) -> str:
    """<results>/<stem>.json (rows + note + environment) and <stem>.md; returns the Markdown."""
    from vggt_deploy.bench.report import environment
    from vggt_deploy.fileio import atomic_write_text

    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / f"{stem}.json",
                      json.dumps({"note": note, "environment": environment(), "rows": rows}, indent=1) + "\n")
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k, "-")) for k, _ in columns) + " |")
    text = "\n".join(lines) + ("\n\n" + note if note else "") + "\n"
    atomic_write_text(results / f"{stem}.md", text)
    print(text)
    return text
