"""Plan variants as executor tasks: a recipe any node can rebuild a workbench from, and the tasks.

The driver's workbench (`vggt_deploy.tuning.variants`) exports the FP32 graph
and fills the calibration range cache once. `recipe` turns it into a
`Recipe`: those files, the model folder and the held-out data as `Shared`
artifacts (by content hash), plus the base plan and the analysis choices. A
task on any node calls `workbench_for(recipe)`, which returns the driver's own
workbench in the driver's process (so ``--executor local`` is exactly the
in-process analysis) and elsewhere builds one from the artifacts, once per
process, without exporting again. Variant files on a node are named by their
unit set inside a folder named by the recipe, so the tasks of one node reuse
each other's builds.

Tasks:

- `score_variant`: quantize one unit set from the shared range cache, score it
  (mAP or output error) on the first `limit` held-out images; size and output
  agreement come back too.
- `time_variants`: one alternating timing run of several unit sets, on one
  node that nothing else uses meanwhile (a timing task).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from vggt_deploy.executor import Executor, Shared, Task, task_key
from vggt_deploy.executor.shared import store_dir
from vggt_deploy.fileio import atomic_write_bytes
from vggt_deploy.quant.plan import QdqPlan
from vggt_deploy.tuning.variants import BaseWorkbench, Workbench

BASE = "#base"  # a unit set that stands for the base plan itself in `time_variants`


@dataclass(frozen=True)
class Recipe:
    """What a node needs to rebuild a workbench; `digest` is its identity in task keys."""

    kind: str  # "own" (this project's model) or "foreign" (an ONNX file exported elsewhere)
    fp32: Shared
    base: QdqPlan
    unit_kind: str
    units: tuple[str, ...]
    runtime: str
    cache: tuple[Shared, ...]  # the range cache file (and the auto-calibration decisions beside it)
    model: Shared | None = None  # own: the model folder
    data: Shared | None = None  # own: the COCO eval folder
    queries: Shared | None = None  # own: the query embeddings the export used (queries.npy)
    images: Shared | None = None  # foreign: the preprocessed held-out images (.npy)

    def digest(self) -> str:
        def d(s: Shared | None) -> str | None:
            return None if s is None else s.digest

        return task_key("recipe", self.kind, d(self.fp32), self.base.text, self.base.target, self.unit_kind,
                        list(self.units), self.runtime, [c.digest for c in self.cache], d(self.model), d(self.data),
                        d(self.queries), d(self.images))


_WORKBENCHES: dict[str, BaseWorkbench] = {}  # recipe digest -> workbench, in this process


def recipe(bench: BaseWorkbench, executor: Executor) -> Recipe:
    """The recipe of `bench`, its artifacts shared through `executor`; `bench` serves this process's tasks.

    The range cache is filled first (by building the base plan), so no task calibrates.
    """
    from vggt_deploy.quant.auto_calib import decisions_path

    bench.build_base()
    cache = [p for p in (bench._ranges_file, decisions_path(bench._ranges_file)) if p.is_file()]
    common = {"fp32": executor.share(bench.fp32_path), "base": bench.base, "unit_kind": bench.unit_kind,
              "units": tuple(u.name for u in bench.units), "runtime": bench.runtime,
              "cache": tuple(executor.share(p) for p in cache)}
    if isinstance(bench, Workbench):
        rec = Recipe("own", model=executor.share(bench.model_dir), data=executor.share(bench.dataset.root),
                     queries=executor.share(bench.queries_path), **common)
    else:
        images = bench.work_dir / "heldout_images.npy"
        if not images.is_file() or not np.array_equal(np.load(images), bench.images):
            buf = io.BytesIO()
            np.save(buf, bench.images)
            atomic_write_bytes(images, buf.getvalue())
        rec = Recipe("foreign", images=executor.share(images), **common)
    _WORKBENCHES[rec.digest()] = bench
    return rec


def workbench_for(rec: Recipe) -> BaseWorkbench:
    """This process's workbench for `rec`: the driver's own, or one built from the shared artifacts."""
    digest = rec.digest()
    if digest not in _WORKBENCHES:
        work = store_dir() / "work" / digest[:16]
        cache_dir = work / "calibration"
        cache_dir.mkdir(parents=True, exist_ok=True)
        for item in rec.cache:  # the range cache is looked up by file name in the cache folder
            target = cache_dir / item.name
            if not target.exists():
                try:
                    target.symlink_to(item.path())
                except FileExistsError:  # another task of this node got there first
                    pass
        if rec.kind == "own":
            bench = Workbench.from_parts(rec.model.path(), rec.fp32.path(), rec.queries.path(), rec.base, work,
                                         rec.unit_kind, rec.units, rec.data.path(), cache_dir, rec.runtime)
        else:
            from vggt_deploy.tuning.foreign import ForeignWorkbench

            bench = ForeignWorkbench.from_parts(rec.fp32.path(), rec.images.path(), rec.base, work, rec.unit_kind,
                                                rec.units, cache_dir, rec.runtime)
        bench.reuse_built = True
        _WORKBENCHES[digest] = bench
    return _WORKBENCHES[digest]


def score_variant(rec: Recipe, quantized: tuple[str, ...], metric: str, limit: int | None) -> dict:
    """Build the variant with `quantized` units and score it: {score, size_mb, agreement}."""
    bench = workbench_for(rec)
    path = bench.build(frozenset(quantized))
    score = bench.score(path, metric, limit)
    return {"score": score, "size_mb": path.stat().st_size / 1e6, "agreement": bench.agreement(path)}


def time_variants(rec: Recipe, variants: dict[str, tuple[str, ...] | str], rounds: int) -> dict:
    """Batch-1 median latency (ms) of each labelled unit set (or `BASE`), in one alternating run."""
    bench = workbench_for(rec)
    paths = {label: bench.build_base() if units == BASE else bench.build(frozenset(units))
             for label, units in variants.items()}
    return {"latency_ms": bench.latency(paths, rounds)}


def score_task(rec: Recipe, label: str, quantized, metric: str, limit: int | None) -> Task:
    units = tuple(sorted(quantized))
    return Task(task_key("score_variant", rec.digest(), units, metric, limit), label, score_variant,
                (rec, units, metric, limit))


def timing_task(rec: Recipe, variants: dict, rounds: int) -> Task:
    spec = {label: units if units == BASE else tuple(sorted(units)) for label, units in variants.items()}
    return Task(task_key("time_variants", rec.digest(), spec, rounds), "timing", time_variants, (rec, spec, rounds),
                timing=True)


def outcome_values(outcomes: dict, tasks: list[Task]) -> dict[str, dict]:
    """{task label: value}; a UserError naming every failed task (the finished ones stay cached)."""
    from vggt_deploy.errors import UserError
    from vggt_deploy.executor import failed_summary

    chosen = {t.key: outcomes[t.key] for t in tasks}
    message = failed_summary(chosen)
    if message:
        raise UserError(message)
    return {t.label: outcomes[t.key].value for t in tasks}
