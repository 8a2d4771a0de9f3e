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


def script_executor(description: str, work: Path, argv: list[str] | None = None):
    """The executor an ablation script's ``--executor`` names (finished variants cached in WORK/results)."""
    import argparse

    from vggt_deploy.executor import EXECUTOR_HELP, make_executor

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]", help=EXECUTOR_HELP)
    return make_executor(parser.parse_args(argv).executor, Path(work) / "results")


METRIC_KEYS = ("map", "map50", "map_small", "map_medium", "map_large", "refexp_acc")


def eval_variants(model_dir: Path, variants: dict[str, str | None], work: Path, eval_images: int = 1000,
                  data_dir: Path | None = None, rounds: int = 30, executor=None) -> dict:
    """Score each variant (label -> plan YAML text, None for FP32) of one model; flat dict of results.

    Each variant (export, quantize, evaluate) is one task of `executor` (default: in this process); the
    latency of all variants is then one timing task, alternating rounds on one node. On a cluster every
    node needs what the plans name (calibration images: the shipped calib_data, or the same path).
    """
    from vggt_deploy.data.coco import synthetic_split
    from vggt_deploy.executor import LocalExecutor, Task, failed_summary, task_key

    executor = executor or LocalExecutor()
    model = executor.share(model_dir)
    data = executor.share(data_dir or synthetic_split("eval", eval_images))
    tasks = {label: Task(task_key("ablation_variant", model.digest, data.digest, label, text), label, ablation_variant,
                         (model, label, text, data, str(work)))
             for label, text in variants.items()}
    outcomes = executor.run(tasks.values(), desc="ablation variants")
    message = failed_summary(outcomes)
    if message:
        raise RuntimeError(message)
    out, built = {}, {}
    for label, task in tasks.items():
        value = outcomes[task.key].value
        out.update({f"{label}_{k}": value[k] for k in (*METRIC_KEYS, "size_mb")})
        built[label] = (variants[label], value["sha256"])
    if rounds:
        task = Task(task_key("ablation_timing", model.digest, built, rounds), "timing", time_ablation_variants,
                    (model, built, str(work), rounds), timing=True)
        outcome = executor.run([task], desc="timing")[task.key]
        if not outcome.ok:
            raise RuntimeError(f"timing failed: {outcome.error}")
        out.update({f"{label}_p50_ms": p50 for label, p50 in outcome.value.items()})
        out["timed_on"] = outcome.node
    return out


def _variant_file(model_dir: Path, label: str, text: str | None, work: Path, sha256: str | None = None) -> Path:
    """The variant's ONNX file under `work`: exported (and quantized) unless one with `sha256` is there."""
    from vggt_deploy.compile import export_from_model
    from vggt_deploy.fileio import sha256_file
    from vggt_deploy.quant.plan import parse_plan

    folder = work / label.replace(" ", "_")
    if sha256 is not None:
        for name in ("model.qdq.onnx", "model.onnx"):
            if (folder / name).is_file() and sha256_file(folder / name) == sha256:
                return folder / name
    plan = parse_plan(text, source=f"<{label}>") if text else None
    result = export_from_model(Path(model_dir), folder, plan)
    return result.qdq or result.fp32


def ablation_variant(model, label: str, text: str | None, data, work: str) -> dict:
    """A task: export and quantize one variant, evaluate it with ONNX Runtime; metrics, size, file hash."""
    from vggt_deploy.backends.onnxruntime.runner import OrtRunner
    from vggt_deploy.bench.evaluate import evaluate, runner_infer
    from vggt_deploy.data.coco import load_coco
    from vggt_deploy.executor import task_threads
    from vggt_deploy.fileio import sha256_file
    from vggt_deploy.model.io import load_model

    path = _variant_file(model.path(), label, text, Path(work))
    with OrtRunner(path, name=label, threads=task_threads()) as runner:
        m = evaluate(load_model(model.path()), load_coco(data.path()), infer=runner_infer(runner), batch_size=32,
                     progress=False)
    return {**{k: float(m[k]) for k in METRIC_KEYS}, "size_mb": path.stat().st_size / 1e6,
            "sha256": sha256_file(path)}


def time_ablation_variants(model, built: dict, work: str, rounds: int) -> dict[str, float]:
    """A timing task: the variants' files (re-exported where this node lacks them), timed side by side."""
    from vggt_deploy.model.io import load_model

    files = {label: _variant_file(model.path(), label, text, Path(work), sha)
             for label, (text, sha) in built.items()}
    return time_files(files, load_model(model.path()).model.cfg.image_size, rounds)


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
