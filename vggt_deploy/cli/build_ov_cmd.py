"""`vggt-deploy build-ov`: an OpenVINO IR folder compiled ahead of time for this CPU."""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.backends.openvino.settings import HINTS, PRECISIONS
from vggt_deploy.cli.app import main


@main.command("build-ov")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), required=True,
              help="FP32 or QDQ ONNX file (the QDQ model from `vggt-deploy export`; "
                   "OpenVINO runs its QDQ layers in int8).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Folder to write: model.xml + model.bin (IR; an FP32 model's constants stored as fp16), cache/ "
                   "(compiled blobs), model.json (versions, CPU, options, source hash).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Compute precision of the float layers; default: bf16 where the CPU has native bf16 "
                   "(avx512_bf16 or AMX), else f32.")
@click.option("--hint", type=click.Choice(HINTS), default="latency", show_default=True,
              help="OpenVINO performance hint: latency (one request at a time, one stream) or throughput.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads (default: OpenVINO's).")
@click.option("--streams", type=click.IntRange(1), default=None,
              help="CPU streams (default: 1 with the latency hint, OpenVINO's choice with throughput).")
@click.option("--dynamic-shapes", is_flag=True,
              help="Compile once with a dynamic batch instead of once per batch size (static shapes run faster).")
@click.option("--keep-zero-points", is_flag=True,
              help="Read the QDQ file's activation zero points as they are, instead of folding them into a shift "
                   "and the next layer's bias (the same quantization grid; OpenVINO's int8 layers run faster "
                   "without zero points).")
@click.option("--no-rewrites", is_flag=True,
              help="Compile the graph as exported, without the exact rewrites that merge nodes for OpenVINO "
                   "(sibling int8 MatMuls fused, and for a batch-1 folder moved head-major with one q/k LayerNorm; "
                   "key LayerNorm affines moved into the query's, conv outputs "
                   "transposed in their own layout, key transposes folded into the MatMul, quantizers moved above the "
                   "Transposes before them).")
@click.option("--batch-size", "batch_sizes", type=click.IntRange(1), multiple=True, default=(1,), show_default=True,
              help="Image batch size to compile ahead; repeat for several. Others compile on first use.")
@click.option("--num-queries", type=click.IntRange(1), default=None,
              help="Rows of query_embeds to compile for (default: the category count eval and bench use).")
def build_ov(onnx_file: Path, output: Path, precision: str | None, hint: str, threads: int | None,
             streams: int | None, dynamic_shapes: bool, keep_zero_points: bool,
             no_rewrites: bool, batch_sizes: tuple[int, ...],
             num_queries: int | None) -> None:
    """Convert an ONNX model to OpenVINO IR and compile it for this CPU; run it with `eval/infer --openvino DIR`."""
    from vggt_deploy.backends.openvino.build import build_ov as run
    from vggt_deploy.backends.openvino.settings import OvOptions

    options = OvOptions(precision=precision, hint=hint, threads=threads, streams=streams,
                        static_shapes=not dynamic_shapes, fold_zero_points=not keep_zero_points,
                        rewrite_graph=not no_rewrites)
    sidecar = run(onnx_file, output, options, batch_sizes=tuple(batch_sizes), num_queries=num_queries)
    compiled = ", ".join(f"batch {k} in {v:.0f} ms" if k != "dynamic" else f"dynamic shapes in {v:.0f} ms"
                         for k, v in sidecar["compile_ms"].items())
    click.echo(f"wrote {output} (OpenVINO {sidecar['openvino'].split('-')[0]}, {sidecar['precision']}, "
               f"{hint} hint; IR {sidecar['ir_size_mb']:.2f} MB)")
    if sidecar["zero_points_folded"]:
        click.echo(f"folded the zero points of {sidecar['zero_points_folded']} int8 activation(s) "
                   "(--keep-zero-points to read them as they are)")
    rewrites = sidecar["graph_rewrites"]
    if rewrites:
        click.echo(f"rewrote the graph for OpenVINO: {rewrites['fused_matmuls']} sibling MatMul group(s) fused "
                   f"({rewrites['heads_first']} moved to head-major layout), "
                   f"{rewrites['key_affines']} key norm affine(s) moved, {rewrites['conv_tokens']} conv layout "
                   f"and {rewrites['transposes_b']} key transpose(s) simplified, {rewrites['quantizers_moved']} "
                   "quantizer(s) moved above data movement (--no-rewrites to compile it as exported)")
    click.echo(f"compiled {compiled}; cached in {output / 'cache'}; settings: {output / 'model.json'}")
