"""Ablation (a): weight granularity per stage (per-channel early vs late, per-tensor vs per-channel everywhere).

Every variant quantizes every MatMul/Gemm/Conv with a weight to int8 (the uniform
int8 plan) and changes only the weight granularity of a stage: early = patch
embedding + blocks 0-2, late = blocks 3-5 + grounding layers + heads. Scored on
the default model with ONNX Runtime (eval split, 1000 images).

    python bench/ablations/granularity.py     -> bench/results/ablation_granularity.{json,md}
    python bench/ablations/granularity.py --executor ray   (variants as Ray tasks: README, "Scaling out")
"""

from __future__ import annotations

from pathlib import Path

from vggt_deploy.paths import default_model_dir
from vggt_deploy.tuning.ablations import eval_variants, lost, script_executor, write_table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: build/ and bench/results/ live here

EARLY = ("patch_embed.*", "token_init.*", "blocks.[0-2].*")
LATE = ("blocks.[3-5].*", "grounding.*", "heads.*")
VARIANTS = {  # label -> (what changed, granularity of early stage, of late stage)
    "per-channel everywhere": ("int8.yaml: weights per output channel", "per-channel", "per-channel"),
    "per-tensor everywhere": ("one scale per weight tensor", "per-tensor", "per-tensor"),
    "per-channel early, per-tensor late": ("the seed's mixed granularity", "per-channel", "per-tensor"),
    "per-tensor early, per-channel late": ("the converse", "per-tensor", "per-channel"),
}


def plan_text(early: str, late: str) -> str:
    rules = "".join(f'  - match: "{p}"\n    weight_granularity: {g}\n' for ps, g in ((EARLY, early), (LATE, late))
                    for p in ps)
    return ("version: 1\ntarget: onnxruntime-cpu\n"
            "calibration: {method: percentile, percentile: 99.99, images: calib_data, num_images: 128}\n"
            "default: {precision: int8, weight_granularity: per-channel, activations: static}\n"
            f"rules:\n{rules}")


def main() -> None:
    model = default_model_dir()
    plans = {"fp32": None, **{label: plan_text(e, l) for label, (_, e, l) in VARIANTS.items()}}
    with script_executor(__doc__, ROOT / "build" / "ablations" / "granularity") as executor:
        res = eval_variants(model, plans, ROOT / "build" / "ablations" / "granularity", executor=executor)
    rows = []
    reference = res["per-channel everywhere_map"]
    for label, (what, _, _) in VARIANTS.items():
        drop = 100 * (res["fp32_map"] - res[f"{label}_map"])
        vs = 100 * (res[f"{label}_map"] - reference)
        rows.append({"variant": label, "changed": what, "fp32_map": res["fp32_map"], "int8_map": res[f"{label}_map"],
                     "drop_points": drop, "p50_ms": res[f"{label}_p50_ms"], "fp32_p50_ms": res["fp32_p50_ms"],
                     "size_mb": res[f"{label}_size_mb"],
                     "takeaway": f"{lost(drop)} vs FP32, {vs:+.2f} points vs per-channel everywhere, "
                                 f"{res['fp32_p50_ms'] / res[f'{label}_p50_ms']:.2f}x FP32 speed"})
    write_table("ablation_granularity", rows, [
        ("variant", "variant"), ("changed", "what changed"), ("fp32_map", "FP32 mAP"), ("int8_map", "INT8 mAP"),
        ("drop_points", "drop (points)"), ("p50_ms", "INT8 ms"), ("fp32_p50_ms", "FP32 ms"), ("size_mb", "INT8 MB"),
        ("takeaway", "takeaway")],
        note="Default model (vggt_small), ONNX Runtime CPU U8S8 QDQ, percentile 99.99 calibration on 128 images; "
             "early = patch_embed, token_init, blocks 0-2; late = blocks 3-5, grounding, heads. "
             "Latency: batch-1 medians, all variants alternating in one process.")


if __name__ == "__main__":
    main()
