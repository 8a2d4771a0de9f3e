"""The seed's limitations, measured: small objects, and calibration under domain shift.

1. mAP by object size (COCO small < 32², medium, large > 96² pixels) for FP32,
   uniform int8 and the mixed plan on the eval split: do tiny objects suffer?
2. Domain shift: the generator's background style is the domain
   (`vggt-deploy data generate --background clutter|stripes`). The shipped
   model was trained and calibrated on clutter; evaluate on stripes with the
   clutter calibration, and recalibrated on stripes (calibration split, 128
   images), for int8 and mixed.

    python bench/ablations/limitations.py   -> bench/results/limitations_size.{json,md}, limitations_domain.{json,md}
    python bench/ablations/limitations.py --executor ray   (variants as Ray tasks: README, "Scaling out")
"""

from __future__ import annotations

from pathlib import Path

from vggt_deploy.paths import default_model_dir, shipped_plan
from vggt_deploy.tuning.ablations import eval_variants, script_executor, write_table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: build/ and bench/results/ live here

from vggt_deploy.data.coco import synthetic_split
from vggt_deploy.data.scenes import SceneConfig

PLANS = {"int8": shipped_plan("int8"), "mixed": shipped_plan("mixed")}


def recalibrated(text: str, source: str) -> str:
    return text.replace("images: calib_data", f"images: '{source}'")


def main() -> None:
    model = default_model_dir()
    texts = {k: p.read_text() for k, p in PLANS.items()}
    work = ROOT / "build" / "ablations" / "limitations"

    with script_executor(__doc__, work) as executor:
        _report(model, texts, work, executor)


def _report(model, texts: dict, work, executor) -> None:
    res = eval_variants(model, {"fp32": None, **texts}, work / "clutter", rounds=0, executor=executor)
    rows = []
    for label in ("fp32", "int8", "mixed"):
        rows.append({"variant": label, **{k: res[f"{label}_{k}"] for k in ("map", "map_small", "map_medium", "map_large")},
                     "small_drop_points": 100 * (res["fp32_map_small"] - res[f"{label}_map_small"]),
                     "large_drop_points": 100 * (res["fp32_map_large"] - res[f"{label}_map_large"])})
    write_table("limitations_size", rows, [
        ("variant", "variant"), ("map", "mAP"), ("map_small", "mAP small"), ("map_medium", "mAP medium"),
        ("map_large", "mAP large"), ("small_drop_points", "small drop (points)"),
        ("large_drop_points", "large drop (points)")],
        note="Default model on the eval split (1000 images, clutter backgrounds), ONNX Runtime; COCO area ranges "
             "on the 256x256 originals.")

    stripes_eval = synthetic_split("eval", 1000, SceneConfig(background="stripes"))
    stripes_calib = str(synthetic_split("calib", 128, SceneConfig(background="stripes")))
    variants = {"fp32": None, "int8, calibrated on clutter": texts["int8"],
                "int8, recalibrated on stripes": recalibrated(texts["int8"], stripes_calib),
                "mixed, calibrated on clutter": texts["mixed"],
                "mixed, recalibrated on stripes": recalibrated(texts["mixed"], stripes_calib)}
    shifted = eval_variants(model, variants, work / "stripes", data_dir=stripes_eval, rounds=0, executor=executor)
    rows = []
    for label in variants:
        rows.append({"variant": label, "eval_domain": "stripes", "map": shifted[f"{label}_map"],
                     "drop_points": 100 * (shifted["fp32_map"] - shifted[f"{label}_map"]),
                     "map_small": shifted[f"{label}_map_small"], "refexp_acc": shifted[f"{label}_refexp_acc"]})
    rows.insert(0, {"variant": "fp32 (in domain, for reference)", "eval_domain": "clutter", "map": res["fp32_map"],
                    "drop_points": 0.0, "map_small": res["fp32_map_small"], "refexp_acc": res["fp32_refexp_acc"]})
    write_table("limitations_domain", rows, [
        ("variant", "variant"), ("eval_domain", "eval backgrounds"), ("map", "mAP"),
        ("drop_points", "drop vs FP32 on the same data (points)"), ("map_small", "mAP small"),
        ("refexp_acc", "RefExp")],
        note="Model trained on clutter backgrounds only. Stripes: eval split seed 3000 with striped backgrounds "
             "(1000 images); recalibration uses 128 calibration-split images (seed 2000) with striped backgrounds.")


if __name__ == "__main__":
    main()
