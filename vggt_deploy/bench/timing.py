"""Latency measurement: warm-up, then timed rounds that alternate targets.

Alternating (and rotating the order every round) spreads a noisy machine's
drift over all targets alike, so ratios measured in one run are honest.

Within a round each target runs a short burst: one untimed call, then `burst`
timed calls. Between bursts the other runtimes ran, and a runtime whose worker
threads went to sleep pays ~1 ms to wake them on its first call; timing only
that call would measure the harness's interleaving rather than the model in
use (measured on vggt_small: OpenVINO int8 2.62 ms when every call follows
another runtime's, 1.55 ms back to back). `burst=0` times single calls, the
cold case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call over the timed rounds; fps counts images (batch / p50)."""

    p50: float
    p90: float
    p99: float
    mean: float
    fps: float
    rounds: int

    @classmethod
    def from_samples(cls, seconds: list[float], batch: int) -> LatencyStats:
        ms = np.asarray(seconds) * 1e3
        p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
        return cls(p50=p50, p90=p90, p99=p99, mean=float(ms.mean()), fps=batch * 1e3 / p50, rounds=len(ms))


BURST = 4  # timed calls per target per round, after one untimed call


def time_alternating(
    calls: dict[str, Callable[[], object]], warmup: int = 5, rounds: int = 30, batch: int = 1, burst: int = BURST
) -> dict[str, LatencyStats]:
    """Time each zero-argument call; rounds alternate between calls, order rotated each round.

    Each round gives every call a burst: one untimed call that wakes its runtime's threads, then
    `burst` timed calls (with `burst=0`, one timed call: the cold case).
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if burst:
                calls[name]()
            for _ in range(max(burst, 1)):
                start = time.perf_counter()
                calls[name]()
                samples[name].append(time.perf_counter() - start)
    return {name: LatencyStats.from_samples(s, batch) for name, s in samples.items()}


RUNTIMES = ("openvino", "onnxruntime")  # what `time_onnx_files` (and so sensitivity, plan auto) can time on


def time_onnx_files(
    files: dict[str, object], feeds: dict[str, dict], warmup: int = 5, rounds: int = 30, runtime: str = "onnxruntime"
) -> dict[str, LatencyStats]:
    """Time ONNX files (label -> path) in `runtime`, each fed `feeds[label]`, in alternating rounds.

    All sessions live in this one process at once; ONNX Runtime's thread pools do not spin, so they do
    not steal cores from each other between calls. OpenVINO compiles each file for the fed shapes, float
    parts in bf16 where the CPU has it (as `ov-*` bench targets run).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}")
    runners = {}
    try:
        for label, path in files.items():
            runners[label] = _runner(runtime, path, label).activate()
        calls = {label: (lambda r=r, f=feeds[label]: r.infer(f)) for label, r in runners.items()}
        return time_alternating(calls, warmup=warmup, rounds=rounds)
    finally:
        for r in runners.values():
            r.close()


def _runner(runtime: str, path, label: str):
    if runtime == "openvino":
        from vggt_deploy.backends.openvino.runner import OvRunner

        return OvRunner(path, name=label)
    from vggt_deploy.backends.onnxruntime.runner import OrtRunner

    return OrtRunner(path, name=label)
