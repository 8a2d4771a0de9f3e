"""Calibration methods on small ViTs with the activation outliers of real pretrained transformers.

For each `OutlierViT` variant (tests/quant/outlier_vit.py: LayerNorm outlier channels, massive
activations on a register token that holds an attention sink, or both): export it, write 32
calibration and 16 held-out images, quantize it (int8, per-channel weights, static activations,
onnxruntime-cpu) with the project's library for every calibration method, and with ONNX Runtime's
own quantize_dynamic and quantize_static defaults, and compare each with FP32 on the held-out
images: Pearson r of every output, per image, mean and worst. Also records the statistics that make
the outliers realistic. Writes bench/results/outlier_models.json and .md.

    python bench/outlier_models.py [--work-dir DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "quant"))  # the models and helpers live with the tests that pin them

from outlier_vit import (
    OUTPUTS,
    VARIANTS,
    activation_stats,
    compare,
    export_outlier_vit,
    load_inputs,
    make_images,
    plan_text,
    quantize_ort_reference,
    quantize_with_library,
    run_model,
)

from vggt_deploy.quant.plan_yaml import PlanError

# (label, method, percentile): `None` as method is a plan without `method:`, the shipped default.
METHODS = [
    ("percentile 99.99 (old default)", "percentile", 99.99),
    ("minmax", "minmax", None),
    ("percentile 99.999", "percentile", 99.999),
    ("mse", "mse", None),
    ("entropy", "entropy", None),
    ("auto", "auto", None),
    ("plan default (no method key)", None, None),
    ("percentile 99.99 + smoothing alpha 0.5", "percentile", 99.99, 0.5),
    ("auto + smoothing alpha 0.5", "auto", None, 0.5),
]
REFERENCES = [("ORT quantize_dynamic (QInt8, per-channel)", "dynamic"), ("ORT quantize_static defaults (QDQ, MinMax)", "static")]
NUM_CALIB, NUM_EVAL, SIZE = 32, 16, 64


def measure(work: Path, seed: int) -> dict:
    calib, held = work / "calib", work / "held"
    make_images(calib, NUM_CALIB, SIZE, seed=seed)
    make_images(held, NUM_EVAL, SIZE, seed=seed + 1)
    calib_inputs, inputs = load_inputs(calib, SIZE), load_inputs(held, SIZE)
    results, stats = {}, {}
    for variant in VARIANTS:
        model = export_outlier_vit(work / variant / "model.onnx", seed=seed, size=SIZE, variant=variant)
        fp32 = run_model(model, inputs)
        stats[variant] = activation_stats(variant, inputs, seed=seed)
        rows, files = {}, {"FP32": model}
        for i, (label, method, percentile, *smoothing) in enumerate(METHODS):
            text = plan_text(calib, method, percentile or 99.99, NUM_CALIB, SIZE, *smoothing)
            try:
                qdq = quantize_with_library(model, work / variant / f"method{i}", text)
            except PlanError as exc:  # a method this checkout does not have yet (`auto` while it lands)
                if "method" not in str(exc):
                    raise
                rows[label] = {"status": f"not available ({exc})"}
                continue
            rows[label] = compare(fp32, run_model(qdq, inputs))
            print(f"{variant:15s} {label:32s} {_cells(rows[label])}", flush=True)
            files[label] = qdq
        for label, kind in REFERENCES:
            qdq = quantize_ort_reference(model, work / variant / f"ort_{kind}.onnx", kind, calib_inputs)
            rows[label] = compare(fp32, run_model(qdq, inputs))
            print(f"{variant:15s} {label:32s} {_cells(rows[label])}", flush=True)
            files[label] = qdq
        results[variant] = rows
    return {"latency_ms": _latency(model, files, inputs),"config": {"seed": seed, "size": SIZE, "calibration_images": NUM_CALIB, "eval_images": NUM_EVAL,
                       "target": "onnxruntime-cpu", "default": "int8, per-channel weights, static activations",
                       "metric": "Pearson r of each output, flattened per image, quantized vs FP32 (ORT CPU)"},
            "activation_stats": stats, "results": results}


def _latency(fp32: Path, files: dict[str, Path], inputs: np.ndarray) -> dict:
    """Batch-1 p50 (ms) of the last variant's files: ONNX Runtime (all), OpenVINO (FP32 and ours)."""
    from vggt_deploy.bench.timing import time_onnx_files

    feeds = {"images": inputs[:1]}
    ort_files = {k: files[k] for k in ("FP32", "auto", REFERENCES[0][0], REFERENCES[1][0])}
    ov_files = {k: files[k] for k in ("FP32", "auto")}
    out = {}
    for runtime, chosen in (("onnxruntime", ort_files), ("openvino", ov_files)):
        stats = time_onnx_files(chosen, {k: feeds for k in chosen}, warmup=10, rounds=200, runtime=runtime)
        out[runtime] = {k: round(s.p50, 4) for k, s in stats.items()}
    return out


def _cells(row: dict) -> str:
    if "status" in row:
        return row["status"]
    return " | ".join(f"{row[name]['mean_r']:.4f} / {row[name]['worst_r']:.4f}" for name in OUTPUTS)


def render(data: dict) -> str:
    cfg = data["config"]
    lines = [("Calibration methods on ViTs with real-transformer outliers. Generated by `bench/outlier_models.py`. Models: `tests/quant/outlier_vit.py` (random-weight "
             "pre-norm ViT, 128 wide, 4 blocks, CLS + 3 registers, 64x64 input, injected outliers). "
             f"{cfg['metric']}; {cfg['calibration_images']} calibration and {cfg['eval_images']} held-out "
             f"images, seed {cfg['seed']}. Cells: mean r / worst-image r."), "",
             "### Outlier statistics", "",
             ("| variant | LayerNorm output: max channel absmax / median channel absmax (smallest - largest "
              "over LayerNorms) | residual stream: max abs / median abs |"), "|---|---|---|"]
    for variant, s in data["activation_stats"].items():
        lines.append(f"| {variant} | {s['ln_channel_ratio_min']:.0f} - {s['ln_channel_ratio']:.0f} "
                     f"| {s['massive_ratio']:.0f} |")
    lines += ["", "### Outputs vs FP32", "", "| variant | method | " + " | ".join(OUTPUTS) + " |",
              "|---|---|" + "---|" * len(OUTPUTS)]
    for variant, rows in data["results"].items():
        for label, row in rows.items():
            cells = [row["status"]] + [""] * (len(OUTPUTS) - 1) if "status" in row else \
                [f"{row[n]['mean_r']:.4f} / {row[n]['worst_r']:.4f}" for n in OUTPUTS]
            lines.append(f"| {variant} | {label} | " + " | ".join(cells) + " |")
    lat = data.get("latency_ms")
    if lat:
        lines += ["", f"### Latency, variant {list(data['results'])[-1]} (batch 1, alternating rounds per runtime)", "",
                  "| runtime | file | p50 ms | vs FP32 in that runtime |", "|---|---|---|---|"]
        for runtime, row in lat.items():
            for label, ms in row.items():
                lines.append(f"| {runtime} | {label} | {ms:.3f} | {row['FP32'] / ms:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, help="keep the models and images here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.work_dir:
        data = measure(args.work_dir, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="outlier-models.") as tmp:
            data = measure(Path(tmp), args.seed)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "outlier_models.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.results_dir / "outlier_models.md").write_text(render(data))
    print(f"wrote {args.results_dir / 'outlier_models.json'} and .md")


if __name__ == "__main__":
    main()
