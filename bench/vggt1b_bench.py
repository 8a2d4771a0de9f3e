"""VGGT-1B on this CPU: FP32, bf16 and int8 side by side in ONNX Runtime and OpenVINO.

Takes a folder written by `vggt-deploy export-vggt1b [--plan vggt1b-int8]` (random weights are fine:
latency does not depend on them) and times, per runtime, every variant in alternating rounds in one
process (ONNX Runtime: FP32 graph, QDQ int8 graph; OpenVINO: FP32 graph in f32 and in bf16, QDQ graph
with its float parts in bf16). Peak memory of each variant is measured in a fresh process.

    vggt-deploy export-vggt1b --image-size 224 --frames 2 --plan vggt1b-int8 -o build/vggt1b_224
    python bench/vggt1b_bench.py --export build/vggt1b_224 [--frames 2] [--rounds 10] [--stem vggt1b]
        -> bench/results/<stem>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from vggt_deploy.bench.memprobe import peak_rss_mb
from vggt_deploy.bench.timing import time_alternating
from vggt_deploy.graph.onnx_io import onnx_size_mb
from vggt_deploy.tuning.ablations import write_table

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {  # runtime -> {variant: (file, OpenVINO inference precision)}
    "onnxruntime": {"fp32": ("model.onnx", None), "int8": ("model.qdq.onnx", None)},
    "openvino": {"fp32": ("model.onnx", "f32"), "bf16": ("model.onnx", "bf16"), "int8": ("model.qdq.onnx", "bf16")},
}


def _runner(runtime: str, path: Path, precision: str | None, threads: int):
    if runtime == "openvino":
        from vggt_deploy.backends.openvino.runner import OvRunner

        return OvRunner(path, name=path.name, threads=threads, precision=precision)
    from vggt_deploy.backends.onnxruntime.runner import OrtRunner

    return OrtRunner(path, name=path.name, threads=threads)


def measure(export: Path, frames: int, rounds: int, threads: int, skip: frozenset[str] = frozenset()) -> list[dict]:
    info = json.loads((export / "export.json").read_text())
    height, width = info["image_hw"]
    feeds = {"images": np.random.default_rng(0).random((frames, 3, height, width), np.float32)}
    rows = []
    for runtime, variants in GROUPS.items():
        # An FP32-only export (no --plan) times the float variants alone.
        variants = {n: v for n, v in variants.items() if (export / v[0]).is_file() and f"{runtime}:{n}" not in skip}
        runners = {}
        try:
            for name, (file, precision) in variants.items():
                runners[name] = _runner(runtime, export / file, precision, threads).activate()
            stats = time_alternating({n: (lambda r=r: r.infer(feeds)) for n, r in runners.items()}, warmup=2,
                                     rounds=rounds, batch=frames, burst=1)
        finally:
            for r in runners.values():
                r.close()
        for name, (file, precision) in variants.items():
            mem = peak_rss_mb({"backend": runtime, "path": str(export / file), "precision": precision,
                               "threads": threads, "input_shapes": {"images": [frames, 3, height, width]}})
            s = stats[name]
            rows.append({"runtime": runtime, "variant": name, "file": file, "precision": precision or "-",
                         "p50_ms": s.p50, "ms_per_frame": s.p50 / frames, "p90_ms": s.p90,
                         "size_mb": onnx_size_mb(export / file), "peak_rss_mb": mem})
        own = [r for r in rows if r["runtime"] == runtime]
        fp32 = next((r for r in own if r["variant"] == "fp32"), own[0])  # the baseline: FP32, else the first timed
        for r in rows:
            if r["runtime"] == runtime:
                r["speedup_vs_fp32"] = fp32["p50_ms"] / r["p50_ms"]
                r["smaller_than_fp32"] = fp32["size_mb"] / r["size_mb"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, help="folder of export-vggt1b --plan vggt1b-int8")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--stem", default="vggt1b", help="results file name (<stem>.json/.md): one per resolution")
    ap.add_argument("--skip", action="append", default=[], metavar="RUNTIME:VARIANT",
                    help="leave a variant out, e.g. openvino:fp32: a runtime's variants are loaded together, and "
                         "three full-size OpenVINO models at 518 x 294 do not fit in 24 GB")
    args = ap.parse_args()
    info = json.loads((args.export / "export.json").read_text())
    if not (args.export / "model.onnx").is_file():
        raise SystemExit(f"{args.export}: no model.onnx (a folder written by vggt-deploy export-vggt1b)")
    rows = measure(args.export, args.frames, args.rounds, args.threads, frozenset(args.skip))
    height, width = info["image_hw"]
    write_table(args.stem, rows, [
        ("runtime", "runtime"), ("variant", "variant"), ("p50_ms", "p50 ms"), ("ms_per_frame", "ms/frame"),
        ("speedup_vs_fp32", "vs FP32"), ("size_mb", "MB"), ("smaller_than_fp32", "smaller"),
        ("peak_rss_mb", "peak RSS MB")],
        note=(f"VGGT-1B ({info['config']}, {info['weights']} weights), {width}x{height}, {args.frames} frames, "
              f"batch of one scene; {args.threads} threads; medians of {args.rounds} alternating rounds per runtime; "
              "peak RSS of each variant in a fresh process. Plan vggt1b-int8 (int8 rows): every transformer "
              "Linear int8 (frame, global, DINO and camera-trunk blocks), patch projection, camera-head ends and "
              "DPT heads bf16, attention matmuls float."
              + (f" Left out: {', '.join(args.skip)}; a runtime without an fp32 row is compared with its first row."
                 if args.skip else "")),
        results=args.results)


if __name__ == "__main__":
    main()
