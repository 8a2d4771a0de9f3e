"""`vggt-deploy build-ort`: build an ONNX model for a runtime ahead of time."""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.backends.onnxruntime.build import LEVELS
from vggt_deploy.cli.app import main


@main.command("build-ort")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), required=True, help="FP32 or QDQ ONNX file.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Optimized model to write (.onnx, or .ort with --format ort); settings go to OUTPUT.json.")
@click.option("--level", type=click.Choice(LEVELS), default="extended", show_default=True,
              help="ONNX Runtime optimization level; 'all' is specific to this machine's CPU.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="'ort' for minimal ONNX Runtime builds on edge boxes.")
@click.option("--fusions", is_flag=True, help="Run ONNX Runtime's transformer fusions first (attention, LayerNorm, GELU).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Intra-op threads to record for the session.")
def build_ort(onnx_file: Path, output: Path, level: str, fmt: str, fusions: bool, threads: int | None) -> None:
    """Optimize an ONNX model offline for ONNX Runtime CPU, so an edge box loads it without re-optimizing."""
    from vggt_deploy.backends.onnxruntime.build import build_ort as run

    settings = run(onnx_file, output, level=level, fmt=fmt, fusions=fusions, threads=threads)
    fused = ", ".join(f"{k} x{v}" for k, v in settings["transformer_fusions"].items()) or "none"
    click.echo(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, level {level}, format {fmt}; fusions: {fused})")
    click.echo(f"settings: {output.with_name(output.name + '.json')}")
