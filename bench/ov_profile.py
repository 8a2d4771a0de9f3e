"""Where the time goes when OpenVINO runs the shipped plan: its per-layer profile, grouped.

OpenVINO's CPU plugin reports every executed node with its type, the kernel it ran
(`exec_type`, e.g. `brgemm_avx512_I8` for an int8 GEMM) and its time (PERF_COUNT). The
profile is summed over timed runs of the shipped `mixed` plan's QDQ file (and of the FP32
graph in bf16 for comparison), batch 1, fixed input shapes, and grouped by node type and by
kernel.

    python bench/ov_profile.py     -> bench/results/ov_profile.{json,md}
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from vggt_deploy.backends.openvino.loader import default_precision, import_openvino
from vggt_deploy.backends.openvino.runner import read_for_cpu
from vggt_deploy.compile import export_from_model
from vggt_deploy.paths import default_model_dir, shipped_plan
from vggt_deploy.quant.plan import load_plan
from vggt_deploy.tuning.ablations import write_table

ROOT = Path(__file__).resolve().parents[1]
RUNS = 200


def profile(path: Path, feeds: dict[str, np.ndarray], precision: str) -> dict[tuple[str, str], float]:
    """Microseconds per inference by (node type, kernel), averaged over RUNS runs."""
    ov = import_openvino()
    core = ov.Core()
    model, _ = read_for_cpu(core, path, fold=True, rewrite=True)  # what OvRunner compiles: lowered
    model.reshape({name: list(value.shape) for name, value in feeds.items()})
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    for _ in range(20):
        request.infer(feeds)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for _ in range(RUNS):
        request.infer(feeds)
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1e6 / RUNS
    return dict(totals)


def main() -> None:
    model = default_model_dir()
    mixed = export_from_model(model, ROOT / "build" / "ov_profile" / "mixed", load_plan(shipped_plan("mixed")))
    queries = np.load(mixed.fp32.parent / "queries.npy")
    size = 128
    feeds = {"images": np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32),
             "query_embeds": queries}
    precision = default_precision()
    runs = {"ov-mixed": profile(mixed.qdq, feeds, precision), "ov-bf16 (FP32 graph)": profile(mixed.fp32, feeds, precision)}
    rows = []
    for target, totals in runs.items():
        total = sum(totals.values())
        for (node, kernel), us in sorted(totals.items(), key=lambda kv: -kv[1]):
            if us / total >= 0.005:
                rows.append({"target": target, "node_type": node, "kernel": kernel, "us": us, "share": us / total,
                             "total_us": total})
    write_table("ov_profile", rows, [("target", "target"), ("node_type", "node type"), ("kernel", "kernel"),
                                     ("us", "µs per inference"), ("share", "share")],
                note=f"OpenVINO per-layer profile (PERF_COUNT), batch 1, 2 threads, {precision} float parts, "
                     f"mean of {RUNS} runs; kernels under 0.5% omitted. Sum of layer times: "
                     + ", ".join(f"{t} {sum(v.values()):.0f} µs" for t, v in runs.items()) + ".",
                results=ROOT / "bench" / "results")


if __name__ == "__main__":
    main()
