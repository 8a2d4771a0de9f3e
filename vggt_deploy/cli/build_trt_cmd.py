"""`vggt-deploy build-trt`: a TensorRT engine from a (QDQ) ONNX model."""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.cli.app import main


@main.command("build-trt")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=Path("build/export/model.qdq.onnx"),
              show_default=True, help="TensorRT-flavour QDQ ONNX (or FP32 ONNX with --fp16).")
@click.option("--int8", is_flag=True, help="Build from the QDQ graph (explicit quantization).")
@click.option("--plan", "plan_value", default=None,
              help="Plan whose per-layer precisions to apply (default: the ones the QDQ export recorded in its metadata).")
@click.option("--fp16", is_flag=True, help="FP16 for unquantized layers (builder flag on 10.x, casts in the ONNX on 11.x).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(16), default=1024, show_default=True, help="Workspace MB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read and update this timing cache (faster rebuilds).")
@click.option("--min-batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--opt-batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--num-queries", type=click.IntRange(1), default=18, show_default=True,
              help="Rows of query_embeds the engine serves (the category list).")
@click.option("--dla-core", type=click.IntRange(0), default=None, help="Jetson DLA core (TensorRT 10.x), GPU fallback on.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("build/model.engine"),
              show_default=True)
def build_trt(onnx_file, int8, plan_value, fp16, workspace_mb, timing_cache, min_batch, opt_batch, max_batch, num_queries, dla_core,
              output) -> None:
    """Build a TensorRT 10.x/11.x engine; written atomically with a sidecar JSON (versions, GPU, hashes, flags)."""
    from vggt_deploy.backends.tensorrt.build import build_engine
    from vggt_deploy.backends.tensorrt.settings import BuildOptions
    from vggt_deploy.cli.app import plan_file
    from vggt_deploy.graph.onnx_io import load_onnx
    from vggt_deploy.quant.plan import load_plan
    from vggt_deploy.quant.resolved import resolve_plan

    precisions, plan_hash = None, None
    if plan_value:  # resolved once, on the graph being built
        plan = load_plan(plan_file(plan_value), target="tensorrt")
        precisions = resolve_plan(plan, load_onnx(onnx_file)).requested_precisions()
        plan_hash = plan.plan_hash()

    options = BuildOptions(int8=int8, fp16=fp16, workspace_mb=workspace_mb, min_batch=min_batch, opt_batch=opt_batch,
                           max_batch=max_batch, num_queries=num_queries, dla_core=dla_core)
    sidecar = build_engine(onnx_file, output, options, timing_cache, precisions=precisions, plan_hash=plan_hash)
    click.echo(f"wrote {output} (TensorRT {sidecar['tensorrt']}, {sidecar['gpu']}, flags {sidecar['build']['flags']})")
