"""`plan auto`: the cheapest plan whose accuracy loss stays within a budget, verified and tightened.

The loss is measured one of two ways (`AutoConfig.metric`): the mAP drop
(FP32 minus plan, in points; this project's own models) or the output error
(relative L2 of the outputs against FP32, in percent; the only way for a model
exported elsewhere, whose task metric is unknown: FP32's own error is 0, so the
plan's error is its loss).

1. Sensitivity analysis (`run_sensitivity`, with the budget's metric) gives
   every unit's damage (only it quantized), recovery (only it float) and
   measured latency and size savings on the target.
2. Prediction: a set S of quantized units is predicted to lose
   max(sum of damage_only over S, damage_all - sum of recovery outside S),
   the more pessimistic of the two additive estimates, negative damages
   counted as zero.
3. Search: among sets predicted within the budget, the one with the largest
   saving (latency or size); exhaustive up to 16 units, greedy by saving per
   unit of damage beyond that.
4. Verification on the full held-out set. A miss is tightened: the unit with
   the largest estimated damage goes back to float and the plan is verified again.
5. The plan written is an ordinary YAML plan; comments carry every unit's
   measurements and the verified result. Its .json and .md summaries are
   written beside it, all three together; `-o` naming the base plan is
   refused before any measurement.

A budget that no plan meets ends with the best plan found (smallest measured
loss) written and `met` false.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from vggt_deploy.executor import Executor, LocalExecutor
from vggt_deploy.fileio import atomic_write_text
from vggt_deploy.outputs import OutputFolder, check_output_path
from vggt_deploy.tuning.sensitivity import SensitivityConfig, UnitResult, metric_damage, run_sensitivity, run_timing
from vggt_deploy.tuning.sensitivity_report import LOSS_TEXT, SUMMARY_KEYS, auto_markdown
from vggt_deploy.tuning.variant_tasks import BASE, outcome_values, recipe, score_task
from vggt_deploy.tuning.variants import BaseWorkbench

SAVING_KEY = {"latency": "latency_saving_ms", "size": "size_saving_mb"}  # objective -> UnitResult field
OBJECTIVES = tuple(SAVING_KEY)
EXHAUSTIVE_UNITS = 16
MAX_VERIFICATIONS = 5


@dataclass(frozen=True)
class AutoConfig:
    """Budget and objective; exactly one of `max_map_drop` and `max_output_error` is set.

    Args:
        max_map_drop: largest allowed mAP@[.5:.95] drop (0.003 = 0.3 points) on the full eval split.
        objective: ``latency`` (measured batch-1 latency saving) or ``size`` (file size saving).
        sensitivity: how the units are measured (its metric is replaced by the budget's).
        max_output_error: largest allowed output error (relative L2 against FP32, percent,
            averaged over the outputs) on the full held-out set.
    """

    max_map_drop: float | None = None
    objective: str = "latency"
    sensitivity: SensitivityConfig = field(default_factory=lambda: SensitivityConfig(confirm_top=0))
    max_output_error: float | None = None

    def __post_init__(self) -> None:
        if (self.max_map_drop is None) == (self.max_output_error is None):
            raise ValueError("set exactly one of max_map_drop and max_output_error")

    @property
    def metric(self) -> str:
        return "map" if self.max_map_drop is not None else "output-error"

    @property
    def budget(self) -> float:
        """The budget in the metric's loss unit (mAP points, or output error percent)."""
        return 100.0 * self.max_map_drop if self.max_map_drop is not None else float(self.max_output_error)


def _unit_damage(row: UnitResult) -> float:
    return max(row.damage_only, row.recovery, 0.0)


def predicted_drop(rows: dict[str, UnitResult], quantized: frozenset[str], damage_all: float) -> float:
    """Predicted loss of quantizing `quantized` (in the rows' unit): the larger of the two additive estimates."""
    from_only = sum(max(0.0, rows[u].damage_only) for u in quantized)
    from_except = damage_all - sum(max(0.0, rows[u].recovery) for u in rows if u not in quantized)
    return max(from_only, from_except, 0.0)


def _saving(rows: dict[str, UnitResult], quantized: frozenset[str], objective: str) -> float:
    return sum(getattr(rows[u], SAVING_KEY[objective]) or 0.0 for u in quantized)


def choose(rows: dict[str, UnitResult], damage_all: float, budget: float, objective: str,
           exclude: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """The non-empty set with the largest saving predicted within `budget` (None if there is none)."""
    key = SAVING_KEY[objective]
    # A unit that saves nothing is never worth its damage.
    names = [u for u in rows if u not in exclude and (getattr(rows[u], key) or 0.0) > 0]
    best, best_saving = None, -1.0
    if len(names) <= EXHAUSTIVE_UNITS:
        for k in range(len(names), 0, -1):
            for combo in itertools.combinations(names, k):
                s = frozenset(combo)
                if predicted_drop(rows, s, damage_all) <= budget:
                    saving = _saving(rows, s, objective)
                    if saving > best_saving:
                        best, best_saving = s, saving
        return best
    chosen: set[str] = set()
    for u in sorted(names, key=lambda u: -(getattr(rows[u], key) or 0.0) / max(_unit_damage(rows[u]), 1e-3)):
        if predicted_drop(rows, frozenset(chosen | {u}), damage_all) <= budget:
            chosen.add(u)
    return frozenset(chosen) or None


def summary_paths(out_path: Path) -> tuple[Path, Path]:
    """The .json and .md summaries written beside the plan."""
    return out_path.with_suffix(".json"), out_path.with_suffix(".md")


def auto_plan(bench: BaseWorkbench, cfg: AutoConfig, out_path: Path, command: str = "", progress: bool = True,
              executor: Executor | None = None) -> dict:
    """Measure, choose, verify, tighten, and write the plan to `out_path` with its .json/.md summaries.

    Every variant is scored, and the final latency timed, as tasks of `executor` (default: in this process).

    The summary's keys follow the metric (`SUMMARY_KEYS`): ``fp32_map``/``plan_map``/``drop_points``...
    for ``map``, ``plan_output_error``/``drop_pct``... for ``output-error``; ``metric`` says which.
    """
    out_path = Path(out_path)
    base_file = Path(bench.base.source)
    check_output_path(out_path, [base_file if base_file.is_file() else None],
                      files=[p.name for p in summary_paths(out_path)])
    metric, budget = cfg.metric, cfg.budget
    executor = executor or LocalExecutor()
    rec = recipe(bench, executor)
    sens = run_sensitivity(bench, dataclasses.replace(cfg.sensitivity, metric=metric), progress=progress,
                           executor=executor, rec=rec)
    rows = {r.unit: r for r in sens.units}
    damage_all = sens.damage_all  # in the budget's unit: the sensitivity ran with its metric

    def full_score(label: str, quantized: frozenset[str]) -> dict:
        task = score_task(rec, label, quantized, metric, None)
        return outcome_values(executor.run([task], desc=label, progress=False), [task])[label]

    # FP32's output error is 0 by definition: no need to run it against itself.
    fp32_full = full_score("fp32", frozenset())["score"] if metric == "map" else 0.0
    tried: list[dict] = []
    chosen = choose(rows, damage_all, budget, cfg.objective)
    if chosen is None:  # nothing is predicted to fit: verify the least damaging single unit anyway
        chosen = frozenset({min(rows, key=lambda u: (_unit_damage(rows[u]), u))})
    for _ in range(MAX_VERIFICATIONS):
        verified = full_score("verify", chosen)
        value = verified["score"]
        drop = metric_damage(metric, fp32_full, value)
        tried.append({"quantized": sorted(chosen), "value": value, "drop": drop, "size_mb": verified["size_mb"],
                      "predicted": predicted_drop(rows, chosen, damage_all),
                      "saving": _saving(rows, chosen, cfg.objective)})
        if drop <= budget or len(chosen) == 1:
            break
        worst = max(chosen, key=lambda u: (_unit_damage(rows[u]), u))
        chosen = chosen - {worst}
    within = [t for t in tried if t["drop"] <= budget]
    best = max(within, key=lambda t: t["saving"]) if within else min(tried, key=lambda t: t["drop"])
    final = frozenset(best["quantized"])
    # 200 rounds: the plan-vs-base comparison is the number users act on, and three sessions time quickly.
    latency, timed_on = run_timing(executor, rec, {"fp32": frozenset(), "base": BASE, "auto": final}, 200, progress)
    keys = SUMMARY_KEYS[metric]
    summary = {
        "met": bool(within), "metric": metric, keys["budget"]: budget, "objective": cfg.objective,
        keys["fp32"]: fp32_full, keys["plan"]: best["value"], keys["drop"]: best["drop"],
        keys["predicted"]: best["predicted"], "quantized": best["quantized"], "float": sorted(set(rows) - final),
        "latency_ms": latency, "size_mb": best["size_mb"],
        "tried": [{keys.get(k, k): v for k, v in t.items()} for t in tried], "output": str(out_path),
        "eval_images": bench.num_eval_images, "runtime": bench.runtime, "sensitivity": sens,
        "execution": {**executor.describe(), "timed_on": timed_on},
    }
    comments = {u: ("quantized: " if u in final else "kept float: ") + _fmt_unit(r, metric) for u, r in rows.items()}
    plan = bench.plan(final, comments=comments, header=_header(bench, summary, rows, command))
    json_path, md_path = summary_paths(out_path)
    report = {k: v for k, v in summary.items() if k != "sensitivity"}
    with OutputFolder(out_path.parent) as tmp:  # the plan and its summaries appear together or not at all
        atomic_write_text(tmp / out_path.name, plan.text)
        atomic_write_text(tmp / json_path.name, json.dumps(report, indent=1) + "\n")
        atomic_write_text(tmp / md_path.name, auto_markdown(summary))
    return summary


def _fmt_unit(row: UnitResult, metric: str = "map") -> str:
    def effect(value: float | None, unit: str) -> str:
        if value is None:
            return f"- {unit}"
        return f"saves {value:.2f} {unit}" if value >= 0 else f"costs {-value:.2f} {unit}"

    loss = "drop" if metric == "map" else "output error"
    unit, rec_unit = (" points", "") if metric == "map" else ("%", "%")
    return (f"{loss} {row.damage_only:+.3f}{unit} when only it is int8, recovery {row.recovery:+.3f}{rec_unit} "
            f"when only it stays float; quantizing {effect(row.latency_saving_ms, 'ms')}, "
            f"{effect(row.size_saving_mb, 'MB')}")


def _header(bench: BaseWorkbench, s: dict, rows: dict[str, UnitResult], command: str) -> str:
    lat = s["latency_ms"]
    sens = s["sensitivity"]
    metric = s["metric"]
    verdict = "MET" if s["met"] else "NOT MET (best plan found)"
    if metric == "map":
        budget = (f"Budget: mAP@[.5:.95] drop <= {s['budget_points'] / 100:.4f} ({s['budget_points']:.2f} points): "
                  f"{verdict}.")
        verified = (f"Verified on the full eval split ({s['eval_images']} images): FP32 mAP {s['fp32_map']:.4f}, "
                    f"this plan {s['plan_map']:.4f}, drop {s['drop_points']:+.3f} points "
                    f"(predicted {s['predicted_points']:.3f}).")
    else:
        budget = f"Budget: {LOSS_TEXT[metric]} <= {s['budget_pct']:.3f}%, mean over the outputs: {verdict}."
        verified = (f"Verified on the full held-out set ({s['eval_images']} images): output error "
                    f"{s['plan_output_error']:.3f}% (predicted {s['predicted_pct']:.3f}%).")
    lines = [
        f"Written by `{command or 'vggt-deploy plan auto'}`.",
        f"Base plan {bench.base.source}, target {bench.base.target}; objective: {s['objective']}.",
        budget,
        verified,
        (f"{bench.runtime} CPU batch-1 median (alternating rounds): FP32 {lat['fp32']:.2f} ms, base plan "
         f"{lat['base']:.2f} ms, this plan {lat['auto']:.2f} ms; size {s['size_mb']:.1f} MB."),
        (f"Unit measurements ({sens.subset_images}-image subset, {'mAP points' if metric == 'map' else 'output error %'}"
         "); float units have a rule below."),
        "Quantized units (as the base plan says):",
    ]
    lines += [f"  {u}: {_fmt_unit(rows[u], metric)}" for u in s["quantized"]]
    if bench.base.target == "tensorrt":
        lines.append(f"Latency costs were measured with {bench.runtime} on the CPU on the TensorRT-flavour QDQ files "
                     "(engines are not built per variant); re-rank on the device with `--objective size` if unsure.")
    return "\n".join(lines)
