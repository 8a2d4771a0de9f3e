"""Sensitivity results as files: JSON, a ranked Markdown table and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from vggt_deploy.fileio import atomic_save_figure, atomic_write_text
from vggt_deploy.outputs import OutputFolder

# `plan auto` summary keys per metric (roles -> keys): the map ones are what earlier plan-auto JSON
# files (and BENCHMARKS.md) use; an output-error budget is in percent, so its keys say so.
SUMMARY_KEYS = {
    "map": {"budget": "budget_points", "fp32": "fp32_map", "plan": "plan_map", "value": "map", "drop": "drop_points",
            "predicted": "predicted_points"},
    "output-error": {"budget": "budget_pct", "fp32": "fp32_output_error", "plan": "plan_output_error",
                     "value": "output_error", "drop": "drop_pct", "predicted": "predicted_pct"},
}
LOSS_TEXT = {"map": "mAP@[.5:.95] drop", "output-error": "output error (relative L2 vs FP32)"}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def markdown(result: dict) -> str:
    """The ranked table, most sensitive unit first, with a note on how it was measured."""
    unit = result["damage_unit"]
    lines = [(f"| rank | unit | layers | only this unit quantized ({unit}) | all but this unit ({unit}) | "
              f"recovery ({unit}) | score | full split: only / all-but | latency saving ms | size saving MB |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(result["units"], 1):
        full = (f"{_num(r['full_damage_only'])} / {_num(r['full_damage_except'])}"
                if r["full_damage_only"] is not None else "-")
        lat = "-" if r["latency_saving_ms"] is None else f"{r['latency_saving_ms']:.2f}"
        lines.append(f"| {i} | {r['unit']} | {r['layers']} | {_num(r['damage_only'])} | {_num(r['damage_except'])} | "
                     f"{_num(r['recovery'])} | {_num(r['score'])} | {full} | {lat} | {r['size_saving_mb']:.2f} |")
    notes = [(f"Base plan {result['base_plan']} (target {result['target']}), {result['unit_kind']} units, "
              f"metric {result['config']['metric']} on the first {result['subset_images']} eval images; "
              f"everything quantized: {result['damage_all']:+.3f} {unit}.")]
    agree = (result.get("agreement") or {}).get("all")
    if agree:
        worst = min(agree, key=lambda o: agree[o]["pearson_min"])
        notes.append(f"Everything quantized, output agreement with FP32: worst-image Pearson r "
                     f"{agree[worst]['pearson_min']:.4f} ({worst}), cosine "
                     f"{min(a['cosine'] for a in agree.values()):.4f} (lowest output).")
    conf = result.get("confirmation")
    if conf:
        notes.append(f"Full eval split ({conf['images']} images): everything quantized {conf['damage_all']:+.3f} {unit}; "
                     f"top units by subset {conf['top_units_subset_order']}, by full split {conf['top_units_full_order']} "
                     f"(same most sensitive unit: {'yes' if conf['same_most_sensitive'] else 'no'}).")
    notes.append("score = mean of the damage when only this unit is quantized and the recovery when only it stays "
                 f"float; savings are what quantizing the unit saves ({result.get('runtime', 'onnxruntime')} on the CPU, batch 1, "
                 "alternating rounds; a latency saving within the run's timing noise counts as zero).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Horizontal bars: damage of only-this-unit and recovery of all-but-this-unit, per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = result["units"][::-1]
    y = np.arange(len(units))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(units) + 1.6))
    ax.barh(y + 0.2, [u["damage_only"] for u in units], height=0.4, label="only this unit quantized")
    ax.barh(y - 0.2, [u["recovery"] for u in units], height=0.4, label="recovered by keeping it float")
    ax.set_yticks(y, [u["unit"] for u in units], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(result["damage_unit"])
    ax.set_title(f"sensitivity ({result['config']['metric']}, {result['subset_images']} images)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
    return path


def write_sensitivity(result: dict, out_dir: Path) -> dict[str, Path]:
    """sensitivity.json, sensitivity.md and sensitivity.png in `out_dir`, moved in together."""
    out_dir = Path(out_dir)
    names = {"json": "sensitivity.json", "md": "sensitivity.md", "png": "sensitivity.png"}
    with OutputFolder(out_dir) as tmp:
        atomic_write_text(tmp / names["json"], json.dumps(result, indent=1) + "\n")
        atomic_write_text(tmp / names["md"], markdown(result))
        plot(result, tmp / names["png"])
    return {key: out_dir / name for key, name in names.items()}


def auto_markdown(summary: dict) -> str:
    """The automatic plan's outcome: what it quantized, the verified loss and the side-by-side latency."""
    metric = summary.get("metric", "map")
    lat, k = summary["latency_ms"], SUMMARY_KEYS[metric]
    budget, drop, predicted = summary[k["budget"]], summary[k["drop"]], summary[k["predicted"]]
    met = "met" if summary["met"] else "NOT met"
    if metric == "map":
        quality = [
            f"| budget (mAP drop) | {budget / 100:.4f} ({budget:.2f} points): {met} |",
            f"| FP32 mAP (full eval split, {summary['eval_images']} images) | {summary['fp32_map']:.4f} |",
            f"| plan mAP | {summary['plan_map']:.4f} |",
            f"| measured drop | {drop / 100:.4f} ({drop:+.2f} points; predicted {predicted:.2f}) |",
        ]
    else:
        quality = [
            f"| budget (output error %, relative L2 vs FP32) | {budget:.3f}%: {met} |",
            (f"| measured output error (full held-out set, {summary['eval_images']} images) | {drop:.3f}% "
             f"(predicted {predicted:.3f}%) |"),
        ]
    lines = [
        "| | value |", "|---|---|",
        quality[0],
        f"| objective | {summary['objective']} |",
        f"| quantized units | {', '.join(summary['quantized'])} |",
        f"| float units | {', '.join(summary['float']) or '-'} |",
        *quality[1:],
        (f"| {summary.get('runtime', 'onnxruntime')} CPU batch-1 p50: FP32 / base plan / this plan | "
         f"{lat['fp32']:.2f} / {lat['base']:.2f} / {lat['auto']:.2f} ms ({lat['auto'] / lat['base']:.2f}x the base plan) |"),
        f"| size | {summary['size_mb']:.1f} MB |",
        f"| verifications | {len(summary['tried'])} |",
    ]
    return "\n".join(lines) + "\n"
