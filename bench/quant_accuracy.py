"""Accuracy of the shipped plans, measured with ONNX Runtime on the eval split.

Exports the default model with each plan and flavour, evaluates every ONNX
file with `vggt-deploy eval --onnx` semantics (same preprocessing, same
pycocotools evaluation), times one-image latency side by side (alternating
rounds, non-spinning thread pools), and writes bench/results/quant_accuracy.json
and .md.

    python bench/quant_accuracy.py [--model models/vggt_small] [--eval-images 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.bench.evaluate import evaluate, runner_infer
from vggt_deploy.bench.timing import time_onnx_files
from vggt_deploy.compile import export_from_model
from vggt_deploy.data.coco import load_coco, synthetic_split
from vggt_deploy.model.io import load_model
from vggt_deploy.paths import default_model_dir, shipped_plan
from vggt_deploy.quant.plan import load_plan

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [  # (label, plan, target override)
    ("fp32", None, None),
    ("int8 (ORT, U8S8)", "int8", None),
    ("mixed (ORT, U8S8)", "mixed", None),
    ("mixed (TensorRT flavour, S8S8 symmetric)", "mixed", "tensorrt"),
    ("mixed-dynamic (ORT)", "mixed-dynamic", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "quant_accuracy")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    args.model = args.model or default_model_dir()
    loaded = load_model(args.model)
    dataset = load_coco(synthetic_split("eval", args.eval_images))
    files: dict[str, Path] = {}
    for label, plan_name, target in VARIANTS:
        plan_path = shipped_plan(plan_name) if plan_name else None
        if plan_path is not None and not plan_path.exists():
            continue
        plan = load_plan(plan_path, target=target) if plan_path else None
        out = export_from_model(args.model, args.build / label.split()[0] / (target or plan.target if plan else "ort"),
                                plan)
        files[label] = out.qdq or out.fp32
    rows = []
    for label, path in files.items():
        with OrtRunner(path, name=label) as runner:
            m = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=16)
        m.pop("detections")
        rows.append({"variant": label, "file": str(path.relative_to(ROOT)), "size_mb": path.stat().st_size / 1e6, **m})
    queries = np.load(next(iter(files.values())).parent / "queries.npy")
    image = np.zeros((1, 3, loaded.model.cfg.image_size, loaded.model.cfg.image_size), np.float32)
    feeds = {"images": image, "query_embeds": queries}
    stats = time_onnx_files(files, {label: feeds for label in files}, warmup=10, rounds=args.rounds)
    for row in rows:
        row["latency_ms_p50"] = stats[row["variant"]].p50
        row["latency_ms_p90"] = stats[row["variant"]].p90
    fp32 = rows[0]
    for row in rows:
        row["map_drop_points"] = 100 * (fp32["map"] - row["map"])
        row["speedup_vs_fp32"] = fp32["latency_ms_p50"] / row["latency_ms_p50"]
    env = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
           "onnxruntime": __import__("onnxruntime").__version__}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quant_accuracy.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    lines = ["| variant | mAP@[.5:.95] | drop (points) | mAP@.5 | refexp acc | size MB | CPU p50 ms (batch 1) | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['map']:.4f} | {r['map_drop_points']:+.2f} | {r['map50']:.4f} | "
                     f"{r['refexp_acc']:.4f} | {r['size_mb']:.1f} | {r['latency_ms_p50']:.2f} | {r['speedup_vs_fp32']:.2f}x |")
    (out_dir / "quant_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
