"""Ablation (c)+(d): number and placement of the geometry-grounding tokens, 3 seeds each.

Trains `vggt_ablation` (4 blocks, width 96, 64x64 input; the shipped model
takes 73 min to train here, so the ablation uses a shorter schedule) with
N in {4, 9, 16} grounding tokens and the grounding layers early (after blocks
1, 2) or late (after blocks 3, 4), seeds 0-2. Every run is scored in FP32 and
INT8-mixed (grounding layers and heads float, the rest int8) with ONNX Runtime
on the eval split; the table gives mean ± std over seeds.

    python bench/ablations/grounding_tokens.py train [--shard 0/2] [--threads 1]
    python bench/ablations/grounding_tokens.py report [--executor ray]

`train` skips runs that are already complete, so it can be split over shards
and resumed. Results: bench/results/ablation_grounding.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from vggt_deploy.executor import EXECUTOR_HELP, make_executor
from vggt_deploy.tuning.ablations import eval_variants, lost, mean_std, time_files, write_table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: build/ and bench/results/ live here

from vggt_deploy.model.config import get_config

COUNTS = (4, 9, 16)
PLACEMENTS = {"early": (1, 2), "late": (3, 4)}
SEEDS = (0, 1, 2)
STEPS, BATCH, TRAIN_IMAGES = 1000, 32, 8000
RUNS = ROOT / "build" / "ablations" / "grounding"
MIXED = """\
version: 1
target: onnxruntime-cpu
calibration: {method: percentile, percentile: 99.99, images: calib_data, num_images: 64}
default: {precision: int8, weight_granularity: per-channel, activations: static}
rules:
  - match: "grounding.*"
    precision: fp32
  - match: "heads.*"
    precision: fp32
"""


def jobs() -> list[tuple[int, str, int]]:
    return list(itertools.product(COUNTS, PLACEMENTS, SEEDS))


def run_dir(count: int, placement: str, seed: int) -> Path:
    return RUNS / f"n{count}_{placement}_s{seed}"


def train_all(shard: tuple[int, int], threads: int) -> None:
    from vggt_deploy.train.data import synthetic_train_data
    from vggt_deploy.train.loop import TrainConfig, train

    torch.set_num_threads(threads)
    mine = [j for i, j in enumerate(jobs()) if i % shard[1] == shard[0]]
    todo = [j for j in mine if not (run_dir(*j) / "model.safetensors").is_file()]
    if not todo:
        return
    data = synthetic_train_data(TRAIN_IMAGES, get_config("vggt_ablation").preprocess)
    for count, placement, seed in todo:
        cfg = get_config("vggt_ablation", num_grounding_tokens=count, grounding_layers=PLACEMENTS[placement])
        train(cfg, data, TrainConfig(steps=STEPS, batch_size=BATCH, seed=seed, warmup_steps=100, log_every=100,
                                     checkpoint_every=10**9), run_dir(count, placement, seed),
              extra_meta={"ablation": "grounding_tokens"})


def scored(path: Path, executor=None) -> dict:
    """FP32 and INT8-mixed results of one trained run (cached beside its eval files, keyed by the weights' hash)."""
    from vggt_deploy.fileio import sha256_file

    cache = RUNS / "eval" / path.name / "result.json"
    digest = sha256_file(path / "model.safetensors")
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("sha256") == digest:
            return saved["result"]
    result = eval_variants(path, {"fp32": None, "int8-mixed": MIXED}, cache.parent, executor=executor)
    cache.write_text(json.dumps({"sha256": digest, "result": result}, indent=1) + "\n")
    return result


def retimed(results: dict[str, dict]) -> None:
    """Time every run's FP32 and INT8-mixed files together, side by side in one process (the per-run timings
    were taken while other runs trained)."""
    files = {}
    for name in results:
        files[f"{name}/fp32"] = RUNS / "eval" / name / "fp32" / "model.onnx"
        files[f"{name}/int8-mixed"] = RUNS / "eval" / name / "int8-mixed" / "model.qdq.onnx"
    p50 = time_files(files, get_config("vggt_ablation").image_size, rounds=40)
    for name, result in results.items():
        for label in ("fp32", "int8-mixed"):
            result[f"{label}_p50_ms"] = p50[f"{name}/{label}"]


def report(executor=None) -> None:
    done = [j for j in jobs() if (run_dir(*j) / "model.safetensors").is_file()]
    results = {run_dir(*j).name: scored(run_dir(*j), executor) for j in done}
    retimed(results)
    rows = []
    for count, placement in itertools.product(COUNTS, PLACEMENTS):
        per_seed = [results[run_dir(count, placement, s).name] for s in SEEDS
                    if run_dir(count, placement, s).name in results]
        if not per_seed:
            continue
        row = {"variant": f"N={count}, {placement} {PLACEMENTS[placement]}", "seeds": len(per_seed)}
        for key in ("fp32_map", "int8-mixed_map", "fp32_refexp_acc", "int8-mixed_refexp_acc", "int8-mixed_p50_ms",
                    "fp32_p50_ms", "int8-mixed_size_mb", "fp32_size_mb"):
            row[key] = mean_std([s[key] for s in per_seed])
        row["drop_points"] = mean_std([100 * (s["fp32_map"] - s["int8-mixed_map"]) for s in per_seed])
        rows.append(row)
    best = max(rows, key=lambda r: r["fp32_map"]["mean"]) if rows else None
    for row in rows:
        gap = 100 * (row["fp32_map"]["mean"] - best["fp32_map"]["mean"])
        row["takeaway"] = (f"FP32 {gap:+.2f} points vs the best ({best['variant']}); INT8-mixed "
                           f"{lost(row['drop_points']['mean'])} (± {row['drop_points']['std']:.2f})")
    write_table("ablation_grounding", rows, [
        ("variant", "variant"), ("seeds", "seeds"), ("fp32_map", "FP32 mAP"), ("int8-mixed_map", "INT8-mixed mAP"),
        ("fp32_refexp_acc", "FP32 RefExp"), ("int8-mixed_refexp_acc", "INT8-mixed RefExp"),
        ("fp32_p50_ms", "FP32 ms"), ("int8-mixed_p50_ms", "INT8-mixed ms"), ("fp32_size_mb", "FP32 MB"),
        ("int8-mixed_size_mb", "INT8-mixed MB"), ("takeaway", "takeaway")],
        note=f"vggt_ablation, {STEPS} steps x batch {BATCH} on {TRAIN_IMAGES} synthetic images, seeds {SEEDS}; "
             "mean ± std over seeds; eval split 1000 images; latency: ONNX Runtime CPU batch 1 medians, all 36 files "
             "timed side by side in alternating rounds.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "report"))
    parser.add_argument("--shard", default="0/1", help="i/n: train every n-th run starting at i")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                        help="report: where the runs' variants are scored (" + EXECUTOR_HELP + ")")
    args = parser.parse_args()
    if args.step == "train":
        i, n = (int(v) for v in args.shard.split("/"))
        train_all((i, n), args.threads)
    else:
        with make_executor(args.executor, RUNS / "eval" / "results") as executor:
            report(executor)


if __name__ == "__main__":
    main()
