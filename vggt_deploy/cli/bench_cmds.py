"""`vggt-deploy bench`: every target side by side."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from vggt_deploy.backends.capabilities import DEVICES
from vggt_deploy.bench.sweep import SWEEPS
from vggt_deploy.bench.timing import BURST
from vggt_deploy.cli.app import _command_line, main, plan_file, resolve_model
from vggt_deploy.errors import UserError
from vggt_deploy.executor import check_executor


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option("--plan", "plan_value", default=None, help="Plan for the ort-mixed target (default: the shipped plan mixed).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Device profile; cuda/jetson need the TensorRT targets.")
@click.option("--targets", default=None, help="Comma-separated subset, e.g. 'ort-fp32,ort-mixed' (default: all for the device).")
@click.option("--batch-size", "batch", type=click.IntRange(1), default=1, show_default=True, help="Batch size for timing.")
@click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=50, show_default=True, help="Alternating timed rounds.")
@click.option("--burst", type=click.IntRange(0), default=BURST, show_default=True,
              help="Timed calls per target per round, after one untimed call that re-wakes its threads "
                   "(0: one cold call per round).")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=os.cpu_count() or 1, show_default=True,
              help="Threads for every runtime (equal, non-spinning pools).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"), show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print the report (bench.json) as one JSON object on stdout; the table goes to stderr.")
@click.option("--min-map", type=float, default=None, help="Exit non-zero when an ok target scores below this mAP.")
@click.option("--sweep", type=click.Choice(SWEEPS), default=None,
              help="Instead of the target matrix: latency and memory vs batch size or vs image tokens.")
@click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[:ADDRESS]",
              help="With --sweep: where the sweep runs. A sweep is all timing, so it is one task that holds a whole "
                   "node offering the bench_node Ray resource; the results name that node.")
@click.option("--render-only", is_flag=True,
              help="Measure nothing: rebuild bench/BENCHMARKS.md from the files in --results-dir "
                   "(after `sensitivity`, `plan auto` or the bench/ablations scripts wrote there).")
def bench(model_dir, plan_value, device, targets, batch, eval_images, rounds, burst, warmup, threads, build_dir, results_dir,
          as_json, min_map, sweep, render_only, executor_spec) -> None:
    """Benchmark every target side by side: size, GFLOPs, latency, FPS, memory, mAP, RefExp, top-k.

    Writes bench.json/.csv/.md and plots to --results-dir and renders BENCHMARKS.md beside --results-dir.
    """
    from vggt_deploy.bench.benchmarks_doc import render_benchmarks
    from vggt_deploy.bench.harness import results_as_dicts, run_bench
    from vggt_deploy.bench.report import environment, markdown_table, write_reports
    from vggt_deploy.bench.speed_bars import bars_sentence
    from vggt_deploy.bench.targets import BenchConfig

    if render_only:
        click.echo(f"summary: {render_benchmarks(results_dir, results_dir.parent / 'BENCHMARKS.md')}")
        return
    model_dir = resolve_model(model_dir)
    cfg = BenchConfig(model_dir=model_dir, build_dir=build_dir, mixed_plan=plan_file(plan_value),
                      device=device, targets=tuple(t.strip() for t in targets.split(",")) if targets else (),
                      batch=batch, eval_images=eval_images, warmup=warmup, rounds=rounds, threads=threads,
                      burst=burst)
    check_executor(executor_spec)
    if executor_spec != "local" and sweep is None:
        raise UserError("--executor applies to --sweep: the target matrix times every target side by side in this "
                        "process (comparisons hold only within one run on one machine)")
    if sweep is not None:
        _run_sweep(sweep, cfg, results_dir, executor_spec)
        render_benchmarks(results_dir, results_dir.parent / "BENCHMARKS.md")
        return
    outcome = run_bench(cfg)
    rows = results_as_dicts(outcome.results)
    meta = {"environment": environment(), "matmul_peak_gops": outcome.peak_gops, "settings": {"model": str(model_dir), "device": device, "batch": batch,
            "eval_images": eval_images, "rounds": rounds, "burst": burst, "warmup": warmup, "threads": threads,
            "command": _command_line(click.get_current_context())}}
    paths = write_reports(rows, meta, results_dir)
    if as_json:  # one JSON object on stdout, as `eval --json`; the table and paths go to stderr
        click.echo(paths["json"].read_text().strip())
    click.echo(markdown_table(rows), err=as_json)
    try:
        click.echo("\n" + bars_sentence(json.loads(paths["json"].read_text())).replace("**", ""), err=as_json)
    except KeyError:
        pass  # ov-mixed or ort-fp32 not in this run
    click.echo(f"\nthis CPU's ONNX Runtime MatMul peak: {outcome.peak_gops.get('fp32', 0):.0f} GOPS fp32, "
               f"{outcome.peak_gops.get('int8', 0):.0f} GOPS int8", err=as_json)
    click.echo(f"\nreports: {', '.join(str(p) for p in paths.values())}", err=as_json)
    click.echo(f"summary: {render_benchmarks(results_dir, results_dir.parent / 'BENCHMARKS.md')}", err=as_json)
    if min_map is not None:
        low = [r["name"] for r in rows if r["status"] == "ok" and (r["map"] or 0.0) < min_map]
        if low:
            click.echo(f"below --min-map {min_map}: {', '.join(low)}", err=True)
            sys.exit(1)


def _run_sweep(kind: str, cfg, results_dir: Path, executor_spec: str = "local") -> None:
    from vggt_deploy.bench import sweep as sw
    from vggt_deploy.bench.report import environment
    from vggt_deploy.executor import make_executor
    from vggt_deploy.fileio import atomic_write_text

    with make_executor(executor_spec) as executor:
        rows, node = sw.run_sweep(kind, cfg, executor)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"sweep_{kind}.json",
                      json.dumps({"environment": environment(), "timed_on": node, "rows": rows}, indent=1) + "\n")
    table = sw.sweep_markdown(kind, rows)
    atomic_write_text(results_dir / f"sweep_{kind}.md", table + "\n")
    click.echo(table)
