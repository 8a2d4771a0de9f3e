"""Ablation (b): calibration method (minmax, percentile, entropy, mse) and number of calibration images.

The uniform int8 plan on the default model, changing only the calibration
section: each method with 128 images, then percentile 99.99 with 32 to 512
images. Calibration images come from the calibration split (seed 2000,
disjoint from train and eval), generated to 512 images. Scored with ONNX
Runtime on the eval split (1000 images).

    python bench/ablations/calibration.py     -> bench/results/ablation_calibration.{json,md}
    python bench/ablations/calibration.py --executor ray   (variants as Ray tasks: README, "Scaling out")
"""

from __future__ import annotations

from pathlib import Path

from vggt_deploy.paths import default_model_dir
from vggt_deploy.tuning.ablations import eval_variants, lost, script_executor, write_table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: build/ and bench/results/ live here

from vggt_deploy.data.coco import synthetic_split

METHODS = ("minmax", "percentile", "entropy", "mse")
COUNTS = (32, 64, 128, 256, 512)


def plan_text(method: str, images: int, source: str) -> str:
    return ("version: 1\ntarget: onnxruntime-cpu\n"
            f"calibration: {{method: {method}, percentile: 99.99, images: '{source}', num_images: {images}}}\n"
            "default: {precision: int8, weight_granularity: per-channel, activations: static}\n")


def main() -> None:
    source = str(synthetic_split("calib", max(COUNTS)))
    variants = {f"{m}, 128 images": (m, 128) for m in METHODS}
    variants.update({f"percentile, {n} images": ("percentile", n) for n in COUNTS if n != 128})
    plans = {"fp32": None, **{label: plan_text(m, n, source) for label, (m, n) in variants.items()}}
    with script_executor(__doc__, ROOT / "build" / "ablations" / "calibration") as executor:
        res = eval_variants(default_model_dir(), plans, ROOT / "build" / "ablations" / "calibration", executor=executor)
    best = max(variants, key=lambda v: res[f"{v}_map"])
    rows = []
    for label, (method, n) in variants.items():
        drop = 100 * (res["fp32_map"] - res[f"{label}_map"])
        rows.append({"variant": label, "changed": f"method {method}, {n} images", "fp32_map": res["fp32_map"],
                     "int8_map": res[f"{label}_map"], "drop_points": drop, "p50_ms": res[f"{label}_p50_ms"],
                     "size_mb": res[f"{label}_size_mb"],
                     "takeaway": f"{lost(drop)} vs FP32; {100 * (res[f'{label}_map'] - res[f'{best}_map']):+.2f} "
                                 f"points vs the best ({best})"})
    write_table("ablation_calibration", rows, [
        ("variant", "variant"), ("changed", "what changed"), ("fp32_map", "FP32 mAP"), ("int8_map", "INT8 mAP"),
        ("drop_points", "drop (points)"), ("p50_ms", "INT8 ms"), ("size_mb", "INT8 MB"), ("takeaway", "takeaway")],
        note="Default model, uniform int8 (ONNX Runtime CPU U8S8, weights per-channel); mse = ONNX Runtime's "
             "distribution calibrator. Latency differences between rows are noise: the graphs are identical "
             "up to scale values.")


if __name__ == "__main__":
    main()
