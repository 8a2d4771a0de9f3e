"""`plan auto`: the cheapest plan whose mAP drop stays within a budget, verified and tightened.

1. Sensitivity analysis (`run_sensitivity`) gives every unit's damage (only
   it quantized), recovery (only it float) and measured latency and size
   savings on the target.
2. Prediction: a set S of quantized units is predicted to lose
   max(sum of damage_only over S, damage_all - sum of recovery outside S)
   mAP points, the more pessimistic of the two additive estimates, negative
   damages counted as zero.
3. Search: among sets predicted within the budget, the one with the largest
   saving (latency or size); exhaustive up to 16 units, greedy by saving per
   point of damage beyond that.
4. Verification on the full eval split. A miss is tightened: the unit with the
   largest estimated damage goes back to float and the plan is verified again.
5. The plan written is an ordinary YAML plan; comments carry every unit's
   measurements and the verified result. Its .json and .md summaries are
   written beside it, all three together; `-o` naming the base plan is
   refused before any measurement.

A budget that no plan meets ends with the best plan found (smallest measured
drop) written and `met` false.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from vggt_deploy.fileio import atomic_write_text
from vggt_deploy.outputs import OutputFolder, check_output_path
from vggt_deploy.tuning.sensitivity import SensitivityConfig, UnitResult, run_sensitivity
from vggt_deploy.tuning.sensitivity_report import auto_markdown
from vggt_deploy.tuning.variants import Workbench

SAVING_KEY = {"latency": "latency_saving_ms", "size": "size_saving_mb"}  # objective -> UnitResult field
OBJECTIVES = tuple(SAVING_KEY)
EXHAUSTIVE_UNITS = 16
MAX_VERIFICATIONS = 5


@dataclass(frozen=True)
class AutoConfig:
    """Budget and objective.

    Args:
        max_map_drop: largest allowed mAP@[.5:.95] drop (0.003 = 0.3 points) on the full eval split.
        objective: ``latency`` (measured batch-1 latency saving) or ``size`` (file size saving).
        sensitivity: how the units are measured (metric must be ``map``).
    """

    max_map_drop: float
    objective: str = "latency"
    sensitivity: SensitivityConfig = field(default_factory=lambda: SensitivityConfig(confirm_top=0))


def _unit_damage(row: UnitResult) -> float:
    return max(row.damage_only, row.recovery, 0.0)


def predicted_drop(rows: dict[str, UnitResult], quantized: frozenset[str], damage_all: float) -> float:
    """Predicted drop (points) of quantizing `quantized`: the larger of the two additive estimates."""
    from_only = sum(max(0.0, rows[u].damage_only) for u in quantized)
    from_except = damage_all - sum(max(0.0, rows[u].recovery) for u in rows if u not in quantized)
    return max(from_only, from_except, 0.0)


def _saving(rows: dict[str, UnitResult], quantized: frozenset[str], objective: str) -> float:
    return sum(getattr(rows[u], SAVING_KEY[objective]) or 0.0 for u in quantized)


def choose(rows: dict[str, UnitResult], damage_all: float, budget_points: float, objective: str,
           exclude: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """The non-empty set with the largest saving predicted within the budget (None if there is none)."""
    key = SAVING_KEY[objective]
    # A unit that saves nothing is never worth its damage.
    names = [u for u in rows if u not in exclude and (getattr(rows[u], key) or 0.0) > 0]
    best, best_saving = None, -1.0
    if len(names) <= EXHAUSTIVE_UNITS:
        for k in range(len(names), 0, -1):
            for combo in itertools.combinations(names, k):
                s = frozenset(combo)
                if predicted_drop(rows, s, damage_all) <= budget_points:
                    saving = _saving(rows, s, objective)
                    if saving > best_saving:
                        best, best_saving = s, saving
        return best
    chosen: set[str] = set()
    for u in sorted(names, key=lambda u: -(getattr(rows[u], key) or 0.0) / max(_unit_damage(rows[u]), 1e-3)):
        if predicted_drop(rows, frozenset(chosen | {u}), damage_all) <= budget_points:
            chosen.add(u)
    return frozenset(chosen) or None


def summary_paths(out_path: Path) -> tuple[Path, Path]:
    """The .json and .md summaries written beside the plan."""
    return out_path.with_suffix(".json"), out_path.with_suffix(".md")


def auto_plan(bench: Workbench, cfg: AutoConfig, out_path: Path, command: str = "", progress: bool = True) -> dict:
    """Measure, choose, verify, tighten, and write the plan to `out_path` with its .json/.md summaries."""
    out_path = Path(out_path)
    base_file = Path(bench.base.source)
    check_output_path(out_path, [base_file if base_file.is_file() else None],
                      files=[p.name for p in summary_paths(out_path)])
    sens = run_sensitivity(bench, cfg.sensitivity, progress=progress)
    rows = {r.unit: r for r in sens.units}
    damage_all = sens.damage_all  # mAP points: the sensitivity metric is map here
    budget = 100.0 * cfg.max_map_drop
    fp32_full = bench.score(bench.build(frozenset()), "map", None)
    tried: list[dict] = []
    chosen = choose(rows, damage_all, budget, cfg.objective)
    if chosen is None:  # nothing is predicted to fit: verify the least damaging single unit anyway
        chosen = frozenset({min(rows, key=lambda u: (_unit_damage(rows[u]), u))})
    for _ in range(MAX_VERIFICATIONS):
        value = bench.score(bench.build(chosen), "map", None)
        drop = 100.0 * (fp32_full - value)
        tried.append({"quantized": sorted(chosen), "map": value, "drop_points": drop,
                      "predicted_points": predicted_drop(rows, chosen, damage_all),
                      "saving": _saving(rows, chosen, cfg.objective)})
        if drop <= budget or len(chosen) == 1:
            break
        worst = max(chosen, key=lambda u: (_unit_damage(rows[u]), u))
        chosen = chosen - {worst}
    within = [t for t in tried if t["drop_points"] <= budget]
    best = max(within, key=lambda t: t["saving"]) if within else min(tried, key=lambda t: t["drop_points"])
    final = frozenset(best["quantized"])
    # 200 rounds: the plan-vs-base comparison is the number users act on, and three sessions time quickly.
    latency = bench.latency({"fp32": bench.build(frozenset()), "base": bench.build_base(), "auto": bench.build(final)},
                            rounds=200)
    summary = {
        "met": bool(within), "budget_points": budget, "objective": cfg.objective, "fp32_map": fp32_full,
        "plan_map": best["map"], "drop_points": best["drop_points"], "predicted_points": best["predicted_points"],
        "quantized": best["quantized"], "float": sorted(set(rows) - final), "latency_ms": latency,
        "size_mb": bench.build(final).stat().st_size / 1e6, "tried": tried, "output": str(out_path),
        "eval_images": len(bench.dataset.records), "runtime": bench.runtime, "sensitivity": sens,
    }
    comments = {u: ("quantized: " if u in final else "kept float: ") + _fmt_unit(r) for u, r in rows.items()}
    plan = bench.plan(final, comments=comments, header=_header(bench, summary, rows, command))
    json_path, md_path = summary_paths(out_path)
    report = {k: v for k, v in summary.items() if k != "sensitivity"}
    with OutputFolder(out_path.parent) as tmp:  # the plan and its summaries appear together or not at all
        atomic_write_text(tmp / out_path.name, plan.text)
        atomic_write_text(tmp / json_path.name, json.dumps(report, indent=1) + "\n")
        atomic_write_text(tmp / md_path.name, auto_markdown(summary))
    return summary


def _fmt_unit(row: UnitResult) -> str:
    def effect(value: float | None, unit: str) -> str:
        if value is None:
            return f"- {unit}"
        return f"saves {value:.2f} {unit}" if value >= 0 else f"costs {-value:.2f} {unit}"

    return (f"drop {row.damage_only:+.3f} points when only it is int8, recovery {row.recovery:+.3f} "
            f"when only it stays float; quantizing {effect(row.latency_saving_ms, 'ms')}, "
            f"{effect(row.size_saving_mb, 'MB')}")


def _header(bench: Workbench, s: dict, rows: dict[str, UnitResult], command: str) -> str:
    lat = s["latency_ms"]
    sens = s["sensitivity"]
    lines = [
        f"Written by `{command or 'vggt-deploy plan auto'}`.",
        f"Base plan {bench.base.source}, target {bench.base.target}; objective: {s['objective']}.",
        f"Budget: mAP@[.5:.95] drop <= {s['budget_points'] / 100:.4f} ({s['budget_points']:.2f} points): "
        f"{'MET' if s['met'] else 'NOT MET (best plan found)'}.",
        f"Verified on the full eval split ({s['eval_images']} images): FP32 mAP {s['fp32_map']:.4f}, "
        f"this plan {s['plan_map']:.4f}, drop {s['drop_points']:+.3f} points (predicted {s['predicted_points']:.3f}).",
        f"{bench.runtime} CPU batch-1 median (alternating rounds): FP32 {lat['fp32']:.2f} ms, base plan "
        f"{lat['base']:.2f} ms, this plan {lat['auto']:.2f} ms; size {s['size_mb']:.1f} MB.",
        f"Unit measurements ({sens.subset_images}-image subset, mAP points); float units have a rule below.",
        "Quantized units (as the base plan says):",
    ]
    lines += [f"  {u}: {_fmt_unit(rows[u])}" for u in s["quantized"]]
    if bench.base.target == "tensorrt":
        lines.append(f"Latency costs were measured with {bench.runtime} on the CPU on the TensorRT-flavour QDQ files "
                     "(engines are not built per variant); re-rank on the device with `--objective size` if unsure.")
    return "\n".join(lines)
