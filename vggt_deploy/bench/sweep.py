"""Scaling sweeps: how latency and memory grow with batch size and with image tokens.

- batch: the shipped model's FP32 and mixed-plan ONNX at batch 1..16.
- resolution: the vggt_small architecture at several input sizes (untrained
  weights: latency does not depend on them), FP32 and uniform int8, so the
  token count (image_size / 16)^2 is the only thing that changes.

Every row of a sweep is timed in one alternating pool (all batch sizes or all resolutions at once), so
the ratios between rows are not skewed by the host slowing down partway through the sweep.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.bench.timing import time_alternating
from vggt_deploy.paths import shipped_plan

SWEEPS = ("batch", "resolution")  # `bench --sweep` kinds
BATCHES = (1, 2, 4, 8, 16)
SIZES = (64, 96, 128, 192, 256)


@dataclass
class _Case:
    """One row of a sweep: its fields (batch or size), the target, the file it runs and what it is fed."""

    fields: dict
    target: str
    path: Path
    feeds: dict[str, np.ndarray]


def _measure(cases: list[_Case], threads: int, rounds: int) -> list[dict]:
    """Rows for `cases`: latency of all of them side by side in one alternating pool, so a slow spell of
    the host touches every batch size or resolution alike and their ratios compare; peak memory of each in
    a fresh process (memprobe)."""
    from vggt_deploy.bench.memprobe import peak_rss_mb

    runners, mem, calls = [], [], {}
    try:
        for i, case in enumerate(cases):
            images, queries = case.feeds["images"], case.feeds["query_embeds"]
            runner = _runner(case.target, case.path, threads).activate()
            runners.append(runner)
            runner.infer(case.feeds)
            mem.append(peak_rss_mb({"backend": "openvino" if case.target.startswith("ov-") else "onnxruntime",
                                    "path": str(case.path), "precision": getattr(runner, "precision", None),
                                    "batch": images.shape[0], "threads": threads, "image_size": images.shape[-1],
                                    "ground_dim": queries.shape[1], "num_queries": queries.shape[0]}))
            calls[i] = lambda r=runner, f=case.feeds: r.infer(f)
        stats = time_alternating(calls, warmup=3, rounds=rounds)
    finally:
        for r in runners:
            r.close()
    rows = []
    for i, case in enumerate(cases):
        s, batch = stats[i], len(case.feeds["images"])
        rows.append({**case.fields, "target": case.target, "p50_ms": round(s.p50, 3),
                     "ms_per_image": round(s.p50 / batch, 3), "fps": round(1e3 * batch / s.p50, 1),
                     "peak_rss_mb": mem[i]})
    return rows


def _runner(name: str, path: Path, threads: int):
    """`ov-*` names run in OpenVINO (`ov-bf16`: the float graph in bf16), the rest in ONNX Runtime."""
    if name.startswith("ov-"):
        from vggt_deploy.backends.openvino.runner import OvRunner

        return OvRunner(path, name=name, threads=threads, precision="bf16" if name == "ov-bf16" else None)
    return OrtRunner(path, name=name, threads=threads)


def sweep_batch(fp32: Path, mixed: Path, queries: np.ndarray, size: int, threads: int, rounds: int = 20) -> list[dict]:
    cases = []
    for batch in BATCHES:
        feeds = {"images": np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32),
                 "query_embeds": queries}
        cases += [_Case({"batch": batch}, name, path, feeds) for name, path in _targets(fp32, mixed).items()]
    return _measure(cases, threads, rounds)


def _targets(fp32: Path, mixed: Path) -> dict[str, Path]:
    return {"ort-fp32": fp32, "ort-mixed": mixed, "ov-bf16": fp32, "ov-mixed": mixed}


def sweep_resolution(model_dir: Path, threads: int, rounds: int = 20) -> list[dict]:
    import torch

    from vggt_deploy.compile import export_from_model
    from vggt_deploy.data.vocabulary import category_names
    from vggt_deploy.model.config import VGGTConfig
    from vggt_deploy.model.io import load_model, save_model
    from vggt_deploy.model.queries import query_embeddings
    from vggt_deploy.model.vggt import create_model
    from vggt_deploy.quant.plan import load_plan

    base = load_model(model_dir)
    queries = query_embeddings(base, category_names())
    plan = load_plan(shipped_plan("mixed"))
    plan = replace(plan, calibration=replace(plan.calibration, num_images=16))  # latency only: ranges barely matter
    cases = []
    with tempfile.TemporaryDirectory(prefix="vggt-sweep.") as tmp:
        for size in SIZES:
            cfg = VGGTConfig.from_dict({**base.model.cfg.to_dict(), "image_size": size})
            torch.manual_seed(0)
            folder = save_model(create_model(cfg).eval(), base.tokenizer, Path(tmp) / f"m{size}")
            out = export_from_model(folder, Path(tmp) / f"e{size}", plan, cache_dir=Path(tmp) / "cache")
            feeds = {"images": np.zeros((1, 3, size, size), np.float32), "query_embeds": queries}
            fields = {"image_size": size, "tokens": (size // cfg.patch_stride) ** 2}
            cases += [_Case(fields, name, path, feeds) for name, path in _targets(out.fp32, out.qdq).items()]
        return _measure(cases, threads, rounds)


def sweep_rows(kind: str, cfg) -> list[dict]:
    """The rows of one sweep (`SWEEPS`) of `cfg`'s model (a `BenchConfig`), measured in this process."""
    if kind == "batch":
        from vggt_deploy.bench.targets import Builds
        from vggt_deploy.model.io import load_model

        builds = Builds(cfg)
        fp32 = builds.export(None)
        mixed = builds.export("mixed")
        size = load_model(cfg.model_dir).model.cfg.image_size
        return sweep_batch(fp32, mixed, np.load(fp32.parent / "queries.npy"), size, cfg.threads, cfg.rounds)
    return sweep_resolution(cfg.model_dir, cfg.threads, cfg.rounds)


def sweep_task(kind: str, cfg, model, plan) -> list[dict]:
    """A timing task: `sweep_rows` on the node it landed on, with the model folder and the mixed plan as
    shared there (`Shared` artifacts)."""
    cfg = replace(cfg, model_dir=model.path(), mixed_plan=plan.path() if plan is not None else None)
    return sweep_rows(kind, cfg)


def run_sweep(kind: str, cfg, executor=None) -> tuple[list[dict], str]:
    """One sweep as one timing task of `executor` (default: this process): its rows and the node timed on.

    A sweep is all timing, so it runs whole on one node that nothing else uses meanwhile.
    """
    from vggt_deploy.executor import LocalExecutor, Task, task_key

    executor = executor or LocalExecutor()
    model = executor.share(cfg.model_dir)
    plan = executor.share(cfg.mixed_plan) if cfg.mixed_plan is not None else None
    task = Task(task_key("sweep", kind, model.digest, plan.digest if plan else None, cfg.threads, cfg.rounds),
                f"sweep {kind}", sweep_task, (kind, cfg, model, plan), timing=True)
    outcome = executor.run([task], desc=f"{kind} sweep")[task.key]
    if not outcome.ok:
        raise RuntimeError(f"{kind} sweep failed on {outcome.node or 'its node'}: {outcome.error}")
    return outcome.value, outcome.node


def sweep_markdown(kind: str, rows: list[dict]) -> str:
    key = "batch" if kind == "batch" else "image_size"
    cols = [key] + (["tokens"] if kind == "resolution" else []) + ["target", "p50_ms", "ms_per_image", "fps", "peak_rss_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
