"""`vggt-deploy compare`: per-layer error of a QDQ model against its FP32 original."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from vggt_deploy.cli.app import main
from vggt_deploy.errors import UserError

OUTPUT_FILES = ("compare.json", "compare.png")


def _triple(value: str | None, option: str) -> tuple[float, float, float] | None:
    """`0.5` or `0.485,0.456,0.406` -> three floats (one value is used for every channel)."""
    if value is None:
        return None
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 3) or not all(math.isfinite(p) for p in parts):
        raise UserError(f"{option} {value!r}: give one number or three comma-separated numbers (R,G,B)")
    if option == "--std" and any(p == 0 for p in parts):
        raise UserError(f"--std {value!r}: a standard deviation of 0 divides by zero")
    return tuple(parts * 3 if len(parts) == 1 else parts)


@main.command()
@click.argument("fp32_onnx", type=click.Path(path_type=Path))
@click.argument("qdq_onnx", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of images (.jpg/.png/...; a COCO folder or calib_data works too) to run both models on.")
@click.option("--num-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Use at most this many images of the folder (sorted by name).")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Input side in pixels [default: from the models' vggt.preprocess metadata or static input shape].")
@click.option("--mean", default=None, help="Normalisation mean, one value or R,G,B [default: from metadata].")
@click.option("--std", default=None, help="Normalisation std, one value or R,G,B [default: from metadata].")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Print the N worst layers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout instead of the table.")
@click.option("--output", "-o", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Also write compare.json and compare.png into this folder (new or existing).")
def compare(fp32_onnx, qdq_onnx, images_dir, num_images, size, mean, std, top, as_json, out_dir) -> None:
    """Per-layer error of QDQ_ONNX against FP32_ONNX, by the plan's layer names.

    Both models run on the same images. For every MatMul/Gemm/Conv layer: SQNR in dB of its output
    (10*log10(signal/noise); inf = identical), relative L2 error, max abs difference, and for quantized
    layers the local SQNR: the layer alone fed FP32 inputs. A low SQNR with a high local SQNR means the
    layer inherits error from upstream; a low local SQNR means the layer itself is hurt. Layers are
    ranked worst first; then cosine, Pearson r, relative L2 and max abs of every graph output.

    A graph input `query_embeds` (vggt models) is fed from the queries.npy beside the ONNX file.
    """
    from vggt_deploy.outputs import OutputFolder, check_output_path
    from vggt_deploy.quant.compare import compare_models
    from vggt_deploy.quant.compare_inputs import extra_feeds, graph_inputs, load_images, load_pair, resolve_preprocess
    from vggt_deploy.quant.compare_report import format_table, plot

    mean, std = _triple(mean, "--mean"), _triple(std, "--std")
    if out_dir is not None:
        check_output_path(out_dir, [fp32_onnx, qdq_onnx, images_dir], folder=True, files=OUTPUT_FILES,
                          inputs_inside_ok=True)
    fp32, qdq = load_pair(fp32_onnx, qdq_onnx)
    image_input, others = graph_inputs(fp32)
    feeds = extra_feeds([fp32_onnx, qdq_onnx], others)
    pp, channel_order = resolve_preprocess([qdq, fp32], image_input, size, mean, std)
    images = load_images(images_dir, num_images, pp, channel_order)
    result = compare_models(fp32, qdq, images, image_input, feeds)
    if out_dir is not None:
        from vggt_deploy.fileio import atomic_write_json

        with OutputFolder(out_dir) as tmp:  # both files or neither
            atomic_write_json(tmp / "compare.json", result.to_json())
            plot(result, tmp / "compare.png")
    if as_json:
        click.echo(json.dumps(result.to_json(), allow_nan=False))
        return
    click.echo(format_table(result, top))
    if out_dir is not None:
        click.echo(f"\nwrote {out_dir / 'compare.json'} and {out_dir / 'compare.png'}")
