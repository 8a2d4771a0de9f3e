"""Candidates for the shipped `mixed` plan, scored where it runs: OpenVINO (bf16 float parts) and ONNX Runtime.

Each candidate is exported by the product's own path (`export_from_model`), scored on the eval
split (1000 images) with pycocotools through OpenVINO and through ONNX Runtime, and weighed.
The numbers quoted in vggt_deploy/plans/mixed.yaml come from here.

    python bench/plan_candidates.py     -> bench/results/plan_candidates.{json,md}
"""

from __future__ import annotations

from pathlib import Path

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.openvino.runner import OvRunner
from vggt_deploy.bench.evaluate import evaluate, runner_infer
from vggt_deploy.compile import export_from_model
from vggt_deploy.data.coco import load_coco, synthetic_split
from vggt_deploy.model.io import load_model
from vggt_deploy.paths import default_model_dir
from vggt_deploy.quant.plan import parse_plan
from vggt_deploy.tuning.ablations import write_table

ROOT = Path(__file__).resolve().parents[1]  # the checkout: build/ and bench/results/ live here
HEAD = ("version: 1\ntarget: openvino-cpu\n"
        "calibration: {{method: percentile, percentile: {p}, images: calib_data, num_images: {n}}}\n"
        "default: {{precision: int8, weight_granularity: per-channel, activations: static}}\n")
CANDIDATES = {  # label -> plan text (None: FP32)
    "fp32": None,
    "previous mixed (grounding + heads fp32, per-tensor blocks 4-5, 128 images)": HEAD.format(n=128, p=99.99) + (
        "rules:\n  - match: 'blocks.[4-5].*'\n    weight_granularity: per-tensor\n"
        "  - match: 'grounding.*'\n    precision: fp32\n  - match: 'heads.*'\n    precision: fp32\n"),
    "int8, 128 images": HEAD.format(n=128, p=99.99),
    "int8, 256 images": HEAD.format(n=256, p=99.99),
    "int8, 256 images, percentile 99.999 (shipped mixed before auto)": HEAD.format(n=256, p=99.999),
    "int8, 256 images, auto (shipped mixed before smoothing)": HEAD.format(n=256, p=99.99).replace(
        "method: percentile, percentile: 99.99", "method: auto"),
    "int8, 256 images, auto, smoothing alpha 0.5 (shipped mixed before fold_norm)": HEAD.format(n=256, p=99.99).replace(
        "method: percentile, percentile: 99.99", "method: auto").replace(
        "activations: static}", "activations: static, smoothing: {alpha: 0.5}}"),
    "int8, 256 images, auto, smoothing alpha 0.5, LayerNorm affines folded (fold_norm, shipped mixed)": HEAD.format(n=256, p=99.99)
    .replace("method: percentile, percentile: 99.99", "method: auto").replace(
        "activations: static}", "activations: static, smoothing: {alpha: 0.5}, fold_norm: true}"),
    "int8, 256 images, minmax": HEAD.format(n=256, p=99.99).replace("method: percentile", "method: minmax"),
    "int8, 256 images, heads fp32": HEAD.format(n=256, p=99.99) + "rules:\n  - match: 'heads.*'\n    precision: fp32\n",
    "int8, 256 images, token_init fp32": HEAD.format(n=256, p=99.99) + (
        "rules:\n  - match: 'token_init.*'\n    precision: fp32\n"),
    "int8, 256 images, attention matmuls int8": HEAD.format(n=256, p=99.99) + (
        "rules:\n  - match: 're:.*'\n    attention_matmuls: true\n"),
}


def main() -> None:
    model = default_model_dir()
    loaded = load_model(model)
    dataset = load_coco(synthetic_split("eval", 1000))
    rows = []
    for label, text in CANDIDATES.items():
        plan = parse_plan(text, source=f"<{label}>") if text else None
        out = export_from_model(model, ROOT / "build" / "plan_candidates" / f"c{len(rows)}", plan)
        path = out.qdq or out.fp32
        row = {"candidate": label, "size_mb": path.stat().st_size / 1e6}
        for runtime, runner in (("ov", OvRunner(path, name=label)), ("ort", OrtRunner(path, name=label))):
            with runner:
                m = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=16, progress=False)
            row[f"{runtime}_map"], row[f"{runtime}_refexp"] = float(m["map"]), float(m["refexp_acc"])
        rows.append(row)
    ref = rows[0]["ort_map"]
    for row in rows:
        row["ov_drop_points"] = 100 * (ref - row["ov_map"])
        row["ort_drop_points"] = 100 * (ref - row["ort_map"])
        row["smaller"] = rows[0]["size_mb"] / row["size_mb"]
    write_table("plan_candidates", rows, [
        ("candidate", "candidate"), ("ov_map", "mAP OpenVINO bf16"), ("ov_drop_points", "drop (points)"),
        ("ort_map", "mAP ONNX Runtime"), ("ort_drop_points", "drop (points)"), ("size_mb", "size MB"),
        ("smaller", "x smaller")],
        note="Drops are against ONNX Runtime FP32. OpenVINO compiles each file for fixed input shapes, float parts "
             "in bf16 (this CPU has AVX512_BF16), except candidates with fp32 rules, which OpenVINO runs in f32 "
             "throughout to honour them.", results=ROOT / "bench" / "results")


if __name__ == "__main__":
    main()
