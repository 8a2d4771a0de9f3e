"""The benchmark harness: build every target, time them side by side, score them, report.

A target is a name plus a function that builds a `Runner` for it. Building and
scoring one target never stops the others: a failure becomes a row with
status "failed" and the reason. Timing alternates targets round by round
(`time_alternating`), with every runtime's thread pool capped at the same
number of threads and no spinning, so ratios measured in one run are honest.
"""

from __future__ import annotations

import difflib
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vggt_deploy.backends.base import Runner
from vggt_deploy.backends.capabilities import backend_for
from vggt_deploy.bench.evaluate import evaluate, runner_infer
from vggt_deploy.bench.flops import count_gflops
from vggt_deploy.bench.peak import achieved_fraction, matmul_peak_gops
from vggt_deploy.bench.targets import BenchConfig, Builds, Target, targets_for
from vggt_deploy.bench.timing import time_alternating
from vggt_deploy.errors import UserError
from vggt_deploy.model.queries import query_embeddings


@dataclass
class TargetResult:
    name: str
    status: str = "ok"
    reason: str = ""
    description: str = ""
    runtime: str = ""  # what ran it, with its version
    plan: str | None = None  # the shipped plan it quantizes with
    file: str = ""
    size_mb: float | None = None
    gflops: float | None = None
    latency_ms: dict = field(default_factory=dict)
    fps: float | None = None
    mem_mb: float | None = None  # peak RSS of a fresh process that loads this target and runs one batch
    map: float | None = None
    map50: float | None = None
    map_small: float | None = None
    map_medium: float | None = None
    map_large: float | None = None
    refexp_acc: float | None = None
    top1: float | None = None
    top5: float | None = None
    energy_mj: float | None = None  # per image, Jetson only (tegrastats board power x latency)
    achieved_gops: float | None = None
    peak_fraction: float | None = None  # of this CPU's int8 (quantized targets) or fp32 MatMul peak


def _peak_memory(target: Target, runner: Runner, path: Path, cfg: BenchConfig, model_cfg, num_queries: int) -> float | None:
    """Peak RSS of a fresh process running only this target (CPU backends; None for others)."""
    from vggt_deploy.bench.memprobe import peak_rss_mb

    if target.backend not in ("torch", "onnxruntime", "openvino"):
        return None
    spec = {"backend": target.backend, "path": str(cfg.model_dir if target.backend == "torch" else path),
            "precision": getattr(runner, "precision", None),
            "dynamic_int8": target.precision == "int8-dynamic", "batch": cfg.batch, "threads": cfg.threads,
            "image_size": model_cfg.image_size, "ground_dim": model_cfg.ground_dim, "num_queries": num_queries}
    return peak_rss_mb(spec)


@dataclass
class BenchOutcome:
    results: list[TargetResult]
    peak_gops: dict[str, float]  # this CPU's MatMul ceilings: {"fp32": ..., "int8": ...}


def run_bench(cfg: BenchConfig) -> BenchOutcome:
    """Run the configured targets on the CPU profile; every target gets a row."""
    import torch

    from vggt_deploy.data.coco import load_coco, synthetic_split
    from vggt_deploy.data.vocabulary import category_names
    from vggt_deploy.model.io import load_model

    if cfg.device == "jetson":
        from vggt_deploy.bench.jetson import require_jetson

        require_jetson()
    available = targets_for(cfg.device)
    gpu = tuple(n for n, t in available.items() if t.device != "cpu")
    default = ("torch-fp32", "ort-fp32", "ov-bf16", "ov-mixed", "ort-mixed", *gpu) if gpu else tuple(available)
    names = cfg.targets or default
    unknown = [n for n in names if n not in available]
    if unknown:
        close = {n: difflib.get_close_matches(n, list(available), n=1) for n in unknown}
        hints = "; ".join(f"{n} (did you mean {c[0]}?)" if c else n for n, c in close.items())
        raise UserError(f"unknown target(s) for --device {cfg.device}: {hints}; known: {', '.join(available)}")
    for name in names:  # refuse an impossible combination before any work
        target = available[name]
        backend_for(target.backend, cfg.device if target.backend == "tensorrt" else "cpu", target.precision)
    if any(available[n].backend == "tensorrt" for n in names):
        from vggt_deploy.backends.tensorrt.loader import import_tensorrt

        import_tensorrt()
    torch.set_num_threads(cfg.threads)
    loaded = load_model(cfg.model_dir)
    builds = Builds(cfg)
    results = {n: TargetResult(name=n, description=available[n].description, plan=available[n].plan,
                               runtime=runtime_version(available[n].runtime)) for n in names}
    runners: dict[str, Runner] = {}
    size = loaded.model.cfg.image_size
    queries = query_embeddings(loaded, category_names())
    feeds = {"images": np.random.default_rng(0).normal(size=(cfg.batch, 3, size, size)).astype(np.float32),
             "query_embeds": queries}
    for name in tqdm(names, desc="building targets", unit="target"):
        res = results[name]
        try:
            runner, path = available[name].build(builds, cfg)
            runner.activate()
            runner.infer(feeds)
            res.mem_mb = _peak_memory(available[name], runner, path, cfg, loaded.model.cfg, len(queries))
            res.file = str(path)
            res.size_mb = round(model_bytes(path) / 1e6, 3)
            runners[name] = runner
        except Exception as exc:  # a failing target is a row, never a stop
            res.status, res.reason = "failed", _reason(exc)
    try:
        import onnx

        gflops = count_gflops(onnx.load(str(builds.export(None))), {"num_queries": len(queries)})
    except Exception:
        gflops = None
    for name in runners:
        results[name].gflops = round(gflops, 3) if gflops is not None else None
    stats = time_alternating({n: (lambda r=r: r.infer(feeds)) for n, r in runners.items()},
                             warmup=cfg.warmup, rounds=cfg.rounds, batch=cfg.batch, burst=cfg.burst)
    for name, s in stats.items():
        results[name].latency_ms = {"p50": round(s.p50, 3), "p90": round(s.p90, 3), "p99": round(s.p99, 3)}
        results[name].fps = round(s.fps, 2)
    peak = matmul_peak_gops(threads=cfg.threads) if runners else {}
    for name in runners:
        if available[name].backend == "tensorrt":
            continue  # the CPU MatMul peak is no ceiling for a GPU
        ceiling = peak["int8" if available[name].int8 else "fp32"]
        achieved, fraction = achieved_fraction(results[name].gflops, results[name].fps, ceiling)
        results[name].achieved_gops = round(achieved, 2) if achieved else None
        results[name].peak_fraction = round(fraction, 4) if fraction else None
    if cfg.device == "jetson":
        _energy(runners, feeds, results, cfg.batch)
    dataset = load_coco(synthetic_split("eval", cfg.eval_images))
    for name, runner in runners.items():
        try:
            m = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=16, progress=False)
            for key in ("map", "map50", "map_small", "map_medium", "map_large", "refexp_acc", "top1", "top5"):
                setattr(results[name], key, round(m[key], 4))
        except Exception as exc:
            results[name].status, results[name].reason = "failed", _reason(exc)
        finally:
            runner.close()
    return BenchOutcome([results[n] for n in names], {k: round(v, 1) for k, v in peak.items()})


def _energy(runners: dict[str, Runner], feeds: dict, results: dict[str, TargetResult], batch: int) -> None:
    """Mean board power while each target runs alone for ~2 s, times its p50 latency, per image."""
    import time

    from vggt_deploy.bench.jetson import PowerSampler

    for name, runner in runners.items():
        sampler = PowerSampler().start()
        end = time.perf_counter() + 2.0
        while time.perf_counter() < end:
            runner.infer(feeds)
        watts = sampler.stop()
        if watts is not None and results[name].latency_ms:
            results[name].energy_mj = round(watts * results[name].latency_ms["p50"] / batch, 3)


def model_bytes(path: Path) -> int:
    """The size of what a target loads: an OpenVINO IR is its .xml plus its .bin."""
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    return size + weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else size


def runtime_version(runtime: str) -> str:
    """'openvino 2026.4.1' for a target's runtime label (each package's version, when installed)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in runtime.replace("+", " ").split():
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(package)
    return " + ".join(parts)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} ({Path(frame.filename).name}:{frame.lineno})"


def results_as_dicts(results: list[TargetResult]) -> list[dict]:
    return [asdict(r) for r in results]
