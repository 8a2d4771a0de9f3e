"""`vggt-deploy export | plan show | check`: ONNX export and mixed-precision quantization."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vggt_deploy.cli.app import TARGET_CHOICE, main, plan_file, resolve_model
from vggt_deploy.errors import UserError


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder to export [default: the shipped models/vggt_small].")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None,
              help="Quantize an existing ONNX image model instead (needs --plan; its calibration.input describes preprocessing).")
@click.option("--plan", "plan_value", default=None,
              help="Mixed-precision plan (YAML path or shipped name: fp32, fp16, int8, mixed, mixed-dynamic).")
@click.option("--target", type=TARGET_CHOICE, default=None, help="Override the plan's target (QDQ flavour).")
@click.option("--eval-images", "eval_images", type=click.Path(path_type=Path), default=None,
              help="With --onnx: a folder of held-out images; report.json and the summary then give the QDQ "
                   "model's agreement with FP32 per output (Pearson r mean and worst image, cosine, max abs), "
                   "since the tool cannot know a foreign model's own metric. Up to 64 images are used.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("build/export"),
              show_default=True, help="Output folder (new, or existing: files of other tools there are left alone).")
def export(model_dir, onnx_file, plan_value, target, eval_images, output) -> None:
    """Export to FP32 ONNX (checked against PyTorch); with --plan, calibrate and write model.qdq.onnx + report.json."""
    from vggt_deploy.compile import export_from_model, export_from_onnx
    from vggt_deploy.quant.plan import load_plan

    plan = load_plan(plan_file(plan_value), target=target) if plan_value else None
    if onnx_file is not None:
        if model_dir is not None:
            raise UserError("give either --model or --onnx, not both")
        if plan is None:
            raise UserError("--onnx needs --plan (there is nothing to do to an ONNX file without one)")
        result = export_from_onnx(onnx_file, output, plan, eval_images=eval_images)
    else:
        if eval_images is not None:
            raise UserError("--eval-images goes with --onnx (a model of this tool is measured by `vggt-deploy eval`)")
        result = export_from_model(resolve_model(model_dir), output, plan)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.export_info["max_abs_diff_vs_torch"].items())
        click.echo(f"FP32 ONNX: {result.fp32} ({result.export_info['fp32_size_mb']:.1f} MB); ORT vs PyTorch max |diff|: {diffs}")
    if result.qdq is not None:
        counts = result.report["counts"]
        click.echo(f"QDQ ONNX ({result.report['target']}): {result.qdq} ({result.export_info['qdq_size_mb']:.1f} MB); "
                   f"layers: {counts['static']} static, {counts['dynamic']} dynamic, {counts['weight_only']} weight-only, "
                   f"{counts['float']} float; "
                   f"report: {output / 'report.json'}")
        auto = result.report.get("auto_calibration")
        if auto:
            kept = auto["choices"].get("minmax", 0)
            click.echo(f"calibration auto: {len(auto['tensors']) - kept} activation ranges clipped where that lowered "
                       f"the consumers' output error, {kept} kept whole (reasons per tensor in report.json)")
        folding, smoothing = result.report.get("norm_folding"), result.report.get("smoothing")
        if folding:
            click.echo(f"LayerNorm folding: {len(folding['folded'])} folded into their readers, "
                       f"{len(folding['skipped'])} left (reasons in report.json)")
        if smoothing:
            click.echo(f"smoothing: {len(smoothing['groups'])} activation(s) smoothed into their readers' weights, "
                       f"{len(smoothing['skipped'])} left (reasons in report.json)")
        agreement = result.report.get("agreement")
        if agreement:
            click.echo(f"agreement with FP32 on {agreement['num_images']} held-out images:")
            for name, d in agreement["outputs"].items():
                click.echo(f"  {name}: Pearson r mean {d['pearson_mean']:.4f}, worst image {d['pearson_min']:.4f}; "
                           f"cosine {d['cosine']:.4f}; max |diff| {d['max_abs']:.3g}")


@main.group()
def plan() -> None:
    """Mixed-precision plans: inspect what a plan does to a model."""


@plan.command("show")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder (default: shipped model).")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None, help="Or an ONNX file (e.g. build/export/model.onnx).")
@click.option("--plan", "plan_value", required=True, help="Plan YAML path or shipped name.")
@click.option("--target", type=TARGET_CHOICE, default=None, help="Override the plan's target.")
def plan_show(model_dir, onnx_file, plan_value, target) -> None:
    """Print the resolved per-layer table without building anything."""
    from vggt_deploy.quant.plan import load_plan
    from vggt_deploy.quant.resolved import resolve_plan

    plan_ = load_plan(plan_file(plan_value), target=target)
    resolved = resolve_plan(plan_, _graph_for(model_dir, onnx_file))
    click.echo(f"plan {plan_.source} (target {plan_.target}, calibration {plan_.calibration.method}, "
               f"{plan_.calibration.num_images} images)")
    click.echo(f"{'layer':42} {'op':6} {'precision':9} {'weights':12} {'activations':11} rule")
    for layer in resolved.layers:
        mode = resolved.mode(layer)
        gran = resolved.spec(layer).weight_granularity if layer.weight and mode != "float" else "-"
        click.echo(f"{layer.name:42} {layer.op_type:6} {resolved.precision(layer):9} {gran:12} {mode:11} "
                   f"{resolved.rule_text(layer)}")


def _graph_for(model_dir: Path | None, onnx_file: Path | None):
    """The FP32 graph whose layers a plan is resolved against (traced in memory for a model folder)."""
    from vggt_deploy.graph.onnx_io import load_onnx

    if onnx_file is not None:
        return load_onnx(onnx_file)

    import torch

    from vggt_deploy.export.onnx_export import simplify_keeping_scopes, trace_model
    from vggt_deploy.model.io import load_model

    loaded = load_model(resolve_model(model_dir))
    cfg = loaded.model.cfg
    # batch 2, as `export` traces: a batch of 1 specialises the batch dimension and the simplifier then
    # turns Linear layers into Gemm nodes without module names, so rules would not resolve as in export
    images = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    queries = torch.zeros(2, cfg.ground_dim)
    return simplify_keeping_scopes(trace_model(loaded.model, images, queries))


@main.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["tensorrt"]), default="tensorrt", show_default=True)
def check(onnx_file: Path, target: str) -> None:
    """Check a QDQ ONNX file against TensorRT's rules; lists every violation (exit 1 if any)."""
    from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
    from vggt_deploy.graph.onnx_io import load_onnx

    violations = validate_tensorrt(load_onnx(onnx_file))
    if violations:
        click.echo(f"{onnx_file}: {len(violations)} TensorRT rule violation(s):")
        for v in violations:
            click.echo(f"  - {v}")
        sys.exit(1)
    click.echo(f"{onnx_file}: passes the TensorRT rules")
