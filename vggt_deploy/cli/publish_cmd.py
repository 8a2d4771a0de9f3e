"""`vggt-deploy bench-publish`: make a recorded benchmark the repository's published one.

`make demo` and `vggt-deploy bench --results-dir build/demo/results` write under build/; the
tracked `bench/results/` and `bench/BENCHMARKS.md` change only through this explicit step.
"""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.cli.app import main


@main.command("bench-publish")
@click.option("--from", "src", type=click.Path(file_okay=False, path_type=Path), default=Path("build/demo/results"),
              show_default=True, help="Results folder of the run to publish.")
@click.option("--to", "dst", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"),
              show_default=True, help="Published results folder; BENCHMARKS.md is re-rendered beside it.")
def bench_publish(src: Path, dst: Path) -> None:
    """Copy a run's result files into --to and re-render the BENCHMARKS.md beside it."""
    from vggt_deploy.bench.benchmarks_doc import publish_results

    copied, doc = publish_results(src, dst)
    click.echo(f"published {len(copied)} files from {src} to {dst}")
    click.echo(f"summary: {doc}")
