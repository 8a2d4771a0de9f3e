"""`vggt-deploy data ...`: synthetic splits and the calibration set."""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.cli.app import main
from vggt_deploy.data.scenes import BACKGROUNDS, SPLIT_SEEDS


@main.group()
def data() -> None:
    """Synthetic grounding data (COCO JSON + referring expressions)."""


@data.command("generate")
@click.option("--split", type=click.Choice(tuple(SPLIT_SEEDS)), default="eval", show_default=True,
              help="Which deterministic split (each has its own seed, so splits are disjoint).")
@click.option("--num-images", "-n", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--background", type=click.Choice(BACKGROUNDS), default="clutter", show_default=True,
              help="Background style (the domain-shift knob).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="New or empty folder (or one holding an earlier split) for images/, instances.json and refs.json.")
def data_generate(split: str, num_images: int, background: str, output: Path) -> None:
    """Write a split as standard COCO JSON; the same options give byte-identical files."""
    from vggt_deploy.data.coco import write_split
    from vggt_deploy.data.scenes import SceneConfig

    path = write_split(output, split, num_images, SceneConfig(background=background))
    click.echo(f"wrote {num_images} images to {path}")


@data.command("calib")
@click.option("--num-images", "-n", type=click.IntRange(1), default=256, show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("calib_data"), show_default=True,
              help="New or empty folder (or one holding an earlier calibration set) for the JPEGs and manifest.json.")
def data_calib(num_images: int, output: Path) -> None:
    """Write the calibration set (calibration split, disjoint from train and eval) with a manifest."""
    from vggt_deploy.data.calib_set import write_calibration_set

    path = write_calibration_set(output, num_images)
    click.echo(f"wrote {num_images} calibration images and manifest.json to {path}")
