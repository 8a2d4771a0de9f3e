"""`vggt-deploy export-vggt1b | eval-geometry`: Meta's VGGT-1B (the port in model/vggt1b).

The public checkpoint (facebook/VGGT-1B, model.safetensors, about 5 GB) cannot be
downloaded by this tool: download it yourself and pass `--weights PATH`. Without
it the model has random weights, which is enough to measure size, latency and the
fidelity of a quantized graph against its FP32 self, but nothing about accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from vggt_deploy.cli.app import main, plan_file
from vggt_deploy.model.vggt1b.config import list_vggt1b_configs


@main.command("export-vggt1b")
@click.option("--config", "config", type=click.Choice(list_vggt1b_configs()), default="vggt_1b", show_default=True,
              help="Architecture: vggt_1b is the public checkpoint's; vggt_1b_tiny a small one for tests.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The checkpoint: .safetensors (the public model.safetensors), or .pt/.pth read with "
                   "torch.load(weights_only=True); loaded strictly (only track_head.* keys are dropped: the "
                   "track head is not ported). Default: random weights.")
@click.option("--image-size", default="518", show_default=True, metavar="W[xH]",
              help="Input width x height in pixels, multiples of 14, fixed in the graph (e.g. 518, 518x294, 224).")
@click.option("--frames", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Frames per calibration sequence and in the export check (the graph takes any count).")
@click.option("--plan", "plan_value", default=None,
              help="Also write the calibrated QDQ model: vggt1b-int8 (CPU: OpenVINO/ONNX Runtime), "
                   "vggt1b-int8-trt (TensorRT), or a plan file.")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime-cpu", "openvino-cpu"]), default=None,
              help="Override the plan's target (QDQ flavour).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for model.onnx, export.json and with --plan model.qdq.onnx and report.json "
                   "(weights above 2 GB in *.onnx.data beside them).")
def export_vggt1b_cmd(config, weights, image_size, frames, plan_value, target, output) -> None:
    """Export VGGT-1B to ONNX (images [S,3,H,W] in [0,1], S dynamic) and optionally quantize it.

    Outputs pose_enc, depth, depth_conf, world_points, world_points_conf. ONNX Runtime is checked
    against PyTorch on two frame counts; calibration runs on synthetic multi-view sequences.
    """
    from vggt_deploy.compile import export_vggt1b_model
    from vggt_deploy.export.vggt1b_export import parse_image_size
    from vggt_deploy.quant.plan import load_plan

    hw = parse_image_size(image_size)
    plan = load_plan(plan_file(plan_value), target=target) if plan_value else None
    out = export_vggt1b_model(config, output, hw, plan, weights, frames)
    info = out.export_info
    click.echo(f"FP32: {out.fp32} ({info['fp32_size_mb']:.1f} MB), ONNX Runtime vs PyTorch max relative "
               f"difference {max(info['max_rel_diff_vs_torch'].values()):.1e} at {info['frames_checked']} frames")
    if out.qdq is not None:
        click.echo(f"QDQ:  {out.qdq} ({info['qdq_size_mb']:.1f} MB, {info['fp32_size_mb'] / info['qdq_size_mb']:.2f}x "
                   f"smaller); {info['calibration']}")
    if weights is None:
        click.echo("weights: random (pass --weights model.safetensors for the public checkpoint)")


@main.command("eval-geometry")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The VGGT-1B ONNX to evaluate (usually model.qdq.onnx of export-vggt1b).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The FP32 reference (default: model.onnx beside --onnx).")
@click.option("--model", "model_config", type=click.Choice(list_vggt1b_configs()), default=None,
              help="Instead of --reference: the PyTorch port in FP32 (this config, with --weights) is the reference.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --model: the checkpoint the export was made from (default: random weights, as exported).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True)
@click.option("--sequences", type=click.IntRange(1), default=4, show_default=True,
              help="Synthetic multi-view evaluation sequences.")
@click.option("--frames", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_geometry_cmd(onnx_file, reference, model_config, weights, runtime, sequences, frames, as_json) -> None:
    """Fidelity to FP32 (depth AbsRel and δ<1.25, confidence-weighted point error, camera angle errors)
    and accuracy against the synthetic ground truth (meaningful for trained weights only)."""
    from vggt_deploy.bench.geometry_eval import evaluate_geometry
    from vggt_deploy.errors import UserError

    if model_config is not None:
        if reference is not None:
            raise UserError("--model and --reference both name the reference: give one")
        result = evaluate_geometry(onnx_file, None, runtime, sequences, frames, progress=not as_json,
                                   torch_reference=(model_config, weights))
    else:
        if weights is not None:
            raise UserError("--weights goes with --model (the PyTorch reference)")
        reference = reference or onnx_file.with_name("model.onnx")
        if reference.resolve() == onnx_file.resolve():
            raise UserError(f"--reference {reference} is the file being evaluated; give the FP32 model.onnx")
        result = evaluate_geometry(onnx_file, reference, runtime, sequences, frames, progress=not as_json)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{onnx_file} vs {result['reference']} ({runtime}, {sequences} sequences x {frames} frames, "
               f"{result['image_hw'][1]}x{result['image_hw'][0]})")
    for key, value in result["fidelity"].items():
        click.echo(f"  fidelity     {key:>20}: {value:.5f}")
    for who in ("model", "reference"):
        for key, value in result["ground_truth"][who].items():
            click.echo(f"  truth/{who:9} {key:>16}: {value:.4f}")
    click.echo(f"  note: {result['note']}")
