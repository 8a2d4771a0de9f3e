"""PTQ vs QAT on the shipped model: the seed's table, measured through the product's own paths.

For each plan: `vggt-deploy qat` (which measures FP32, PTQ and QAT mAP / RefExp accuracy on the
eval split with ONNX Runtime), then the PTQ and QAT QDQ files timed side by side (batch 1,
alternating rounds) in the fastest CPU runtime that runs them: OpenVINO for int8 QDQ, ONNX
Runtime for int4 weights (MatMulNBits, which OpenVINO does not read). One seed per plan
unless --seeds is given (a run costs more than 15 minutes on this 2-core machine).
Writes bench/results/qat.json and qat.md. A plan whose QAT folder already exists under
--work is not trained again (an interrupted table resumes).

    python bench/qat_table.py [--steps 300] [--seeds 0] [--work build/qat]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from vggt_deploy.bench.timing import time_onnx_files
from vggt_deploy.compile import export_from_model
from vggt_deploy.paths import default_model_dir, shipped_plan
from vggt_deploy.quant.plan import load_plan, parse_plan
from vggt_deploy.tuning.ablations import write_table
from vggt_deploy.tuning.qat import QatConfig, run_qat

ROOT = Path(__file__).resolve().parents[1]
INT4 = """\
version: 1
target: onnxruntime-cpu
calibration: {method: auto, images: calib_data, num_images: 256}
default: {precision: int8, weight_granularity: per-channel, activations: static}
rules:  # every Linear of the backbone and grounding layers: int4 weights per block of 32, weight-only
  - match: "re:(blocks|grounding)\\\\.\\\\d+\\\\.(attn|self_attn|token_to_image|image_to_token)\\\\.(q|k|v|proj)|(blocks|grounding)\\\\.\\\\d+\\\\.mlp\\\\.fc[12]"
    precision: int4
    weight_granularity: per-block
    block_size: 32
    activations: off
"""
SLUGS = {"int8": "int8", "int8 + attention matmuls": "int8-attention",
         "int4 weights (per-block) + int8 elsewhere": "int4"}
PLANS = {  # label -> (plan, runtime that times it)
    "int8": (lambda: load_plan(shipped_plan("int8")), "openvino"),
    "int8 + attention matmuls": (lambda: load_plan(shipped_plan("int8-attention")), "openvino"),
    "int4 weights (per-block) + int8 elsewhere": (lambda: parse_plan(INT4, source="<int4 weights>"), "onnxruntime"),
}


def _reading(rows: list[dict]) -> str:
    """Where QAT pays and what it costs, from the measured rows."""
    def drop(plan: str, kind: str) -> float:
        return next(float(r["drop (points)"]) for r in rows if r["plan"] == plan and r["method"] == kind)

    minutes = max(r["training min"] for r in rows)
    parts = [f"{plan}: PTQ {drop(plan, 'PTQ'):+.2f}, QAT {drop(plan, 'QAT'):+.2f} points" for plan in PLANS]
    return ("Reading: " + "; ".join(parts) + ". QAT pays most where PTQ loses most (int4 weights, the "
            "attention matmuls); with `auto` calibration PTQ already loses little on this model, so the QAT gain "
            "above FP32 is mostly the 300 extra training steps (the FP32 model was not fine-tuned further), not "
            f"recovered quantization error. It costs {minutes:.1f} min of fine-tuning per run here, the training "
            "data, and a model folder per plan; the graphs, sizes and latencies are those of PTQ.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "qat")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    model = default_model_dir()
    rows, raw = [], {}
    for label, (make_plan, runtime) in PLANS.items():
        plan = make_plan()
        runs = []
        for seed in seeds:
            out = args.work / f"{SLUGS[label]}_seed{seed}"
            if not (out / "qat_scales.safetensors").is_file():
                run_qat(model, plan, QatConfig(steps=args.steps, seed=seed), out, command=f"bench/qat_table.py ({label})")
            runs.append(json.loads((out / "config.json").read_text())["qat"] | {"folder": str(out)})
        raw[label] = runs
        files = {"PTQ": export_from_model(model, args.work / "files" / SLUGS[label] / "ptq", plan).qdq,
                 "QAT": export_from_model(Path(runs[0]["folder"]), args.work / "files" / SLUGS[label] / "qat",
                                          plan).qdq}
        feeds = {k: {"images": np.zeros((1, 3, 128, 128), np.float32),
                     "query_embeds": np.load(v.parent / "queries.npy")} for k, v in files.items()}
        latency = {k: s.p50 for k, s in time_onnx_files(files, feeds, warmup=5, rounds=100, runtime=runtime).items()}
        fp32 = statistics.mean(r["metrics"]["fp32"]["map"] for r in runs)
        for kind in ("PTQ", "QAT"):
            maps = [r["metrics"][kind.lower()]["map"] for r in runs]
            refexp = [r["metrics"][kind.lower()]["refexp_acc"] for r in runs]
            minutes = statistics.mean(r["train_minutes"] for r in runs) if kind == "QAT" else 0.0
            spread = f" ± {statistics.stdev(maps):.4f}" if len(maps) > 1 else ""
            rows.append({"plan": label, "method": kind, "map": f"{statistics.mean(maps):.4f}{spread}",
                         "drop (points)": f"{100 * (fp32 - statistics.mean(maps)):+.2f}",
                         "refexp acc": f"{statistics.mean(refexp):.4f}", "CPU p50 ms": latency[kind],
                         "runtime": runtime,
                         "size MB": round(files[kind].stat().st_size / 1e6, 2), "training min": round(minutes, 1),
                         "seeds": len(runs)})
    note = (f"Default model, FP32 mAP {fp32:.4f} (ONNX Runtime, synthetic eval split, 1000 images). QAT: "
            f"{args.steps} steps, batch 32, weights lr 2e-5, learned activation scales lr 1e-3, bf16 autocast. "
            "Latency: batch 1, 128x128, PTQ and QAT of one plan timed in alternating rounds (identical graphs up "
            "to scale values, so a difference is noise).")
    note += " " + _reading(rows)
    columns = [(k, k) for k in rows[0]]
    write_table("qat", rows, columns, note, results=ROOT / "bench" / "results")
    (ROOT / "bench" / "results" / "qat_runs.json").write_text(json.dumps({"steps": args.steps, "seeds": seeds,
                                                                          "runs": raw}, indent=1) + "\n")


if __name__ == "__main__":
    main()
