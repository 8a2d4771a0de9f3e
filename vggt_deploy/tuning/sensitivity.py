"""Which units to keep in higher precision: measured, one unit at a time, both ways.

For every unit (see `vggt_deploy.tuning.units`) two variants are built from the
base plan and scored on a subset of the held-out data (the eval split, or for a
model exported elsewhere the held-out image folder, scored by output error):

- *only*: this unit quantized, every other unit float. Its damage (mAP points
  lost, or output error) is what quantizing the unit costs on its own;
- *except*: every unit quantized but this one. The damage it takes away from
  the all-quantized model (*recovery*) is what keeping the unit float buys.

The two disagree when units interact, so the ranking uses their mean
(``score``). Each unit's latency and size saving is measured too: batch-1
latency in the workbench's runtime (OpenVINO or ONNX Runtime) of all variants in alternating rounds (one process,
non-spinning pools, one node: a timing task) and file sizes. The FP32 and the all-quantized files are
timed twice each (as separate sessions); the larger gap between the twins is
the run's timing noise, and a latency saving smaller than it counts as zero
(the measured value is kept beside it). The top units and the all-quantized
model are then re-scored on the full held-out set to confirm the answer.

Every variant is a task of an executor (`vggt_deploy.executor`): in this
process by default, or on Ray (`--executor ray`); the answer is the same, and
finished variants are cached by content hash, so an interrupted run resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vggt_deploy.executor import Executor, LocalExecutor
from vggt_deploy.tuning.variant_tasks import outcome_values, recipe, score_task, timing_task, workbench_for
from vggt_deploy.tuning.variants import METRICS, BaseWorkbench


@dataclass(frozen=True)
class SensitivityConfig:
    """What to measure.

    Args:
        metric: ``map`` (mAP@[.5:.95] through pycocotools; own models only) or ``output-error``
            (relative L2 of the outputs against FP32, percent, averaged over outputs; no labels needed).
        images: held-out images for the ranking subset.
        confirm_top: units re-scored on the full held-out set (0: none).
        latency_rounds: alternating timed rounds per variant (0: skip timing).
    """

    metric: str = "map"
    images: int = 300
    confirm_top: int = 3
    latency_rounds: int = 60

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")


@dataclass
class UnitResult:
    """One unit's measurements (damage in mAP points, or output error in percent)."""

    unit: str
    layers: int
    damage_only: float
    damage_except: float
    recovery: float
    score: float
    latency_saving_ms: float | None  # zero when within the run's timing noise
    size_saving_mb: float
    latency_saving_measured_ms: float | None = None  # before the noise floor
    full_damage_only: float | None = None
    full_damage_except: float | None = None


@dataclass
class SensitivityResult:
    """A sensitivity run, units ranked most sensitive first; `to_json` only where it is written out."""

    config: SensitivityConfig
    unit_kind: str
    runtime: str  # where latency was timed
    base_plan: str
    target: str
    damage_unit: str
    damage_all: float
    subset_images: int
    scores: dict[str, float]
    latency_ms: dict[str, float]
    latency_noise_ms: float | None
    size_mb: dict[str, float]
    units: list[UnitResult]
    confirmation: dict | None = None
    command: str = ""
    # {variant label: {output: cosine, pearson_mean, pearson_min, max_abs, rel_l2}} where the workbench
    # measures output agreement (foreign models); pearson_min is the worst image's Pearson r.
    agreement: dict[str, dict] | None = None
    # Where it ran: executor, nodes, and `timed_on`, the one node every latency was measured on.
    execution: dict | None = None

    def unit(self, name: str) -> UnitResult:
        return next(u for u in self.units if u.unit == name)

    def to_json(self) -> dict:
        return asdict(self)


REPEAT = "#repeat"  # label suffix of the timing twins that measure the noise


def timing_noise(latency: dict[str, float]) -> float | None:
    """The largest gap between a file's two timings in one run (None without twins)."""
    gaps = [abs(latency[label] - latency[label + REPEAT]) for label in latency if label + REPEAT in latency]
    return max(gaps) if gaps else None


def above_noise(saving: float | None, noise: float | None) -> float | None:
    """`saving`, or 0.0 when it is within the timing noise of its run."""
    if saving is None or noise is None:
        return saving
    return saving if abs(saving) > noise else 0.0


def metric_damage(metric: str, reference: float, value: float) -> float:
    """What a variant lost against FP32: mAP points (fp32 - value) or output error percent (value - fp32)."""
    return 100.0 * (reference - value) if metric == "map" else value - reference


def run_sensitivity(bench: BaseWorkbench, cfg: SensitivityConfig, progress: bool = True,
                    executor: Executor | None = None, rec=None) -> SensitivityResult:
    """Measure every unit of `bench`; units ranked, most sensitive first.

    Variants are scored as tasks of `executor` (default: in this process, no result cache); timing is one
    timing task, after every score is in. `rec`: the bench's `variant_tasks.recipe` for this executor,
    when the caller already has it (its artifacts are hashed only once).
    """
    executor = executor or LocalExecutor()
    rec = rec or recipe(bench, executor)
    names = [u.name for u in bench.units]
    every = frozenset(names)
    variants = {"fp32": frozenset(), "all": every}
    for name in names:
        variants[f"only:{name}"] = frozenset({name})
        variants[f"except:{name}"] = every - {name}
    tasks = [score_task(rec, label, quantized, cfg.metric, cfg.images) for label, quantized in variants.items()]
    values = outcome_values(executor.run(tasks, desc="sensitivity variants", progress=progress), tasks)
    scores = {label: v["score"] for label, v in values.items()}
    sizes = {label: v["size_mb"] for label, v in values.items()}
    agreement = {label: v["agreement"] for label, v in values.items() if v["agreement"] is not None}
    latency, timed_on = {}, None
    if cfg.latency_rounds:
        timed = {**variants, **{label + REPEAT: variants[label] for label in ("fp32", "all")}}
        latency, timed_on = run_timing(executor, rec, timed, cfg.latency_rounds, progress)
    noise = timing_noise(latency)
    damage = {label: metric_damage(cfg.metric, scores["fp32"], value) for label, value in scores.items()}
    rows = []
    for unit in bench.units:
        only, exc = f"only:{unit.name}", f"except:{unit.name}"
        recovery = damage["all"] - damage[exc]
        lat = (0.5 * ((latency["fp32"] - latency[only]) + (latency[exc] - latency["all"])) if latency else None)
        size = 0.5 * ((sizes["fp32"] - sizes[only]) + (sizes[exc] - sizes["all"]))
        rows.append(UnitResult(unit.name, len(unit.layers), damage[only], damage[exc], recovery,
                               0.5 * (damage[only] + recovery), above_noise(lat, noise), size,
                               latency_saving_measured_ms=lat))
    rows.sort(key=lambda r: (-r.score, r.unit))
    confirmation = _confirm(executor, rec, cfg, rows, variants, progress) if cfg.confirm_top else None
    return SensitivityResult(
        config=cfg, unit_kind=bench.unit_kind, runtime=bench.runtime, base_plan=bench.base.source, target=bench.base.target,
        damage_unit="mAP points" if cfg.metric == "map" else "output error %", damage_all=damage["all"],
        subset_images=min(cfg.images, bench.num_eval_images), scores=scores, latency_ms=latency,
        latency_noise_ms=noise, size_mb=sizes, units=rows, confirmation=confirmation, agreement=agreement or None,
        execution={**executor.describe(), "timed_on": timed_on})


def run_timing(executor: Executor, rec, variants: dict, rounds: int, progress: bool) -> tuple[dict[str, float], str]:
    """One alternating timing run of `variants` ({label: unit set or BASE}) as a timing task: latency, node."""
    task = timing_task(rec, variants, rounds)
    outcome = executor.run([task], desc="timing", progress=progress)[task.key]
    outcome_values({task.key: outcome}, [task])
    return outcome.value["latency_ms"], outcome.node


def _confirm(executor: Executor, rec, cfg: SensitivityConfig, rows: list[UnitResult], variants: dict,
             progress: bool) -> dict:
    """Re-score the all-quantized model and the top units on the full held-out set."""
    top = rows[: cfg.confirm_top]
    labels = ["fp32", "all"] + [f"{kind}:{r.unit}" for r in top for kind in ("only", "except")]
    tasks = [score_task(rec, label, variants[label], cfg.metric, None) for label in labels]
    values = outcome_values(executor.run(tasks, desc="confirming on the full held-out set", progress=progress), tasks)
    full = {label: values[label]["score"] for label in labels}
    num_images = workbench_for(rec).num_eval_images
    damage = {label: metric_damage(cfg.metric, full["fp32"], value) for label, value in full.items()}
    for r in top:
        r.full_damage_only = damage[f"only:{r.unit}"]
        r.full_damage_except = damage[f"except:{r.unit}"]
    full_scores = {r.unit: 0.5 * (r.full_damage_only + damage["all"] - r.full_damage_except) for r in top}
    order_full = sorted(full_scores, key=lambda u: -full_scores[u])
    return {
        "images": num_images,
        "scores": full,
        "damage_all": damage["all"],
        "top_units_subset_order": [r.unit for r in top],
        "top_units_full_order": order_full,
        "same_most_sensitive": bool(top) and order_full[0] == top[0].unit,
    }
