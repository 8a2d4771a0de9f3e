"""The `vggt-deploy` command line: a thin click group.

Each command parses its options, builds a typed config and calls one library
function. A `UserError` becomes one line on stderr and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from vggt_deploy.errors import UserError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "vggt_small"


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def _command_line(ctx: click.Context) -> str:
    """The command as a user would retype it: options that differ from their defaults."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == param.default or not isinstance(param, click.Option):
            continue
        opt = max(param.opts, key=len)
        parts.append(opt if param.is_flag else f"{opt} {value}")
    return " ".join(parts)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-deploy")
def main() -> None:
    """Export, quantize, build and benchmark VGGT grounding models for the edge.

    Start with `vggt-deploy eval` on the shipped model, or `vggt-deploy data
    generate` to see the synthetic grounding scenes it was trained on.
    """


@main.group()
def data() -> None:
    """Synthetic grounding data (COCO JSON + referring expressions)."""


@data.command("generate")
@click.option("--split", type=click.Choice(["train", "calib", "eval"]), default="eval", show_default=True,
              help="Which deterministic split (each has its own seed, so splits are disjoint).")
@click.option("--num-images", "-n", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--background", type=click.Choice(["clutter", "stripes"]), default="clutter", show_default=True,
              help="Background style (the domain-shift knob).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write images/, instances.json and refs.json into (replaced atomically).")
def data_generate(split: str, num_images: int, background: str, output: Path) -> None:
    """Write a split as standard COCO JSON; the same options give byte-identical files."""
    from vggt_deploy.data.coco import write_split
    from vggt_deploy.data.scenes import SceneConfig

    path = write_split(output, split, num_images, SceneConfig(background=background))
    click.echo(f"wrote {num_images} images to {path}")


@data.command("calib")
@click.option("--num-images", "-n", type=click.IntRange(1), default=256, show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("calib_data"),
              show_default=True, help="Folder for the JPEG images and manifest.json (replaced atomically).")
def data_calib(num_images: int, output: Path) -> None:
    """Write the calibration set (calibration split, disjoint from train and eval) with a manifest."""
    from vggt_deploy.data.calib_set import write_calibration_set

    path = write_calibration_set(output, num_images)
    click.echo(f"wrote {num_images} calibration images and manifest.json to {path}")


@main.command()
@click.option("--model", "model_name", default="vggt_small", show_default=True, help="Registered config name.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model folder to write (weights, config, vocabulary, train_log.jsonl, checkpoint/).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="COCO folder to train on (instances.json, refs.json, images/); default: synthetic scenes.")
@click.option("--train-images", type=click.IntRange(1), default=40000, show_default=True,
              help="Number of synthetic training scenes (ignored with --data).")
@click.option("--steps", type=click.IntRange(1), default=6000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds Python, NumPy and torch; recorded.")
@click.option("--lambda-loc", type=float, default=1.0, show_default=True, help="Weight of L_loc (L1 + GIoU).")
@click.option("--lambda-ground", type=float, default=1.0, show_default=True, help="Weight of L_ground (contrastive).")
@click.option("--cls-loss", type=click.Choice(["focal", "ce"]), default="focal", show_default=True)
@click.option("--grounding-tokens", type=click.IntRange(1), default=None, help="Override N (a perfect square).")
@click.option("--grounding-layers", default=None, help="Override the grounding layers, e.g. '2,4,6'.")
@click.option("--no-bf16", is_flag=True, help="Train in float32 instead of bfloat16 autocast.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.")
def train(model_name, output, data_dir, train_images, steps, batch_size, lr, seed, lambda_loc, lambda_ground,
          cls_loss, grounding_tokens, grounding_layers, no_bf16, resume) -> None:
    """Train a VGGT with the blended loss L = L_cls + λ_loc·L_loc + λ_ground·L_ground."""
    from vggt_deploy.model.config import get_config
    from vggt_deploy.train.data import dataset_train_data, synthetic_train_data
    from vggt_deploy.train.losses import LossWeights
    from vggt_deploy.train.loop import TrainConfig
    from vggt_deploy.train.loop import train as run_training

    overrides = {}
    if grounding_tokens is not None:
        overrides["num_grounding_tokens"] = grounding_tokens
    if grounding_layers:
        try:
            overrides["grounding_layers"] = tuple(int(v) for v in grounding_layers.split(","))
        except ValueError:
            raise UserError(f"--grounding-layers: expected comma-separated integers, got {grounding_layers!r}") from None
    cfg = get_config(model_name, **overrides)
    categories = None
    if data_dir is not None:
        from vggt_deploy.data.coco import load_coco

        dataset = load_coco(data_dir)
        data_ = dataset_train_data(dataset, cfg.preprocess)
        categories = dataset.category_names
        source = {"data": str(data_dir)}
    else:
        data_ = synthetic_train_data(train_images, cfg.preprocess)
        source = {"data": f"synthetic train split, {train_images} images"}
    source["train_command"] = _command_line(click.get_current_context())
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, bf16=not no_bf16,
                            loss=LossWeights(lambda_loc=lambda_loc, lambda_ground=lambda_ground, cls_loss=cls_loss))
    path = run_training(cfg, data_, train_cfg, output, categories=categories, resume=resume, extra_meta=source)
    click.echo(f"model written to {path}")


PLANS_DIR = DEFAULT_MODEL.parent / "plans"


def _plan_path(value: str | None) -> Path | None:
    """A plan path, or a shipped plan's short name (`mixed` -> models/plans/mixed.yaml)."""
    if value is None:
        return None
    path = Path(value)
    if not path.exists() and (PLANS_DIR / f"{value}.yaml").exists():
        return PLANS_DIR / f"{value}.yaml"
    if not path.exists() and (PLANS_DIR / value).exists():
        return PLANS_DIR / value
    return path


TARGET_CHOICE = click.Choice(["tensorrt", "onnxruntime-cpu"])


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder to export [default: the shipped models/vggt_small].")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None,
              help="Quantize an existing ONNX image model instead (needs --plan; its calibration.input describes preprocessing).")
@click.option("--plan", "plan_value", default=None,
              help="Mixed-precision plan (YAML path or shipped name: fp32, fp16, int8, mixed, mixed-trt...).")
@click.option("--target", type=TARGET_CHOICE, default=None, help="Override the plan's target (QDQ flavour).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("build/export"),
              show_default=True, help="Output folder.")
def export(model_dir, onnx_file, plan_value, target, output) -> None:
    """Export to FP32 ONNX (checked against PyTorch); with --plan, calibrate and write model.qdq.onnx + report.json."""
    from vggt_deploy.export.pipeline import export_from_model, export_from_onnx
    from vggt_deploy.quant.plan import load_plan

    plan = load_plan(_plan_path(plan_value), target=target) if plan_value else None
    if onnx_file is not None:
        if model_dir is not None:
            raise UserError("give either --model or --onnx, not both")
        if plan is None:
            raise UserError("--onnx needs --plan (there is nothing to do to an ONNX file without one)")
        result = export_from_onnx(onnx_file, output, plan)
    else:
        result = export_from_model(model_dir or DEFAULT_MODEL, output, plan)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.export_info["max_abs_diff_vs_torch"].items())
        click.echo(f"FP32 ONNX: {result.fp32} ({result.export_info['fp32_size_mb']:.1f} MB); ORT vs PyTorch max |diff|: {diffs}")
    if result.qdq is not None:
        counts = result.report["counts"]
        click.echo(f"QDQ ONNX ({result.report['target']}): {result.qdq} ({result.export_info['qdq_size_mb']:.1f} MB); "
                   f"layers: {counts['static']} static, {counts['dynamic']} dynamic, {counts['weight_only']} weight-only, "
                   f"{counts['float']} float; "
                   f"report: {output / 'report.json'}")


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
    from vggt_deploy.quant.layers import find_layers
    from vggt_deploy.quant.plan import load_plan
    from vggt_deploy.quant.qdq import partition

    plan_ = load_plan(_plan_path(plan_value), target=target)
    graph = _graph_for(model_dir, onnx_file)
    layers = find_layers(graph)
    resolved = plan_.resolve([l.name for l in layers])
    static, dynamic, weight_only = partition(layers, resolved)
    mode = {l.name: "static" for l in static} | {l.name: "dynamic" for l in dynamic} | {l.name: "off" for l in weight_only}
    click.echo(f"plan {plan_.source} (target {plan_.target}, calibration {plan_.calibration.method}, "
               f"{plan_.calibration.num_images} images)")
    click.echo(f"{'layer':42} {'op':6} {'precision':9} {'weights':12} {'activations':11} rule")
    for layer in layers:
        spec, rule = resolved[layer.name].spec, resolved[layer.name].rule
        gran = spec.weight_granularity if layer.weight and layer.name in mode else "-"
        shown = spec.precision if layer.name in mode or not spec.quantized else "fp32"
        rule_text = "default" if rule is None else f"{rule}: {plan_.rules[rule].match}"
        click.echo(f"{layer.name:42} {layer.op_type:6} {shown:9} {gran:12} {mode.get(layer.name, 'float'):11} {rule_text}")


def _graph_for(model_dir: Path | None, onnx_file: Path | None):
    """The FP32 graph whose layers a plan is resolved against (traced in memory for a model folder)."""
    from vggt_deploy.export.onnx_export import load_onnx

    if onnx_file is not None:
        return load_onnx(onnx_file)
    import numpy as np

    from vggt_deploy.export.onnx_export import _trace, simplify_keeping_scopes
    from vggt_deploy.model.io import load_model

    import torch

    loaded = load_model(model_dir or DEFAULT_MODEL)
    cfg = loaded.model.cfg
    images = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    queries = torch.zeros(2, cfg.ground_dim)
    return simplify_keeping_scopes(_trace(loaded.model, images, queries))


@main.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["tensorrt"]), default="tensorrt", show_default=True)
def check(onnx_file: Path, target: str) -> None:
    """Check a QDQ ONNX file against TensorRT's rules; lists every violation (exit 1 if any)."""
    from vggt_deploy.export.onnx_export import load_onnx
    from vggt_deploy.quant.validate import validate_tensorrt

    violations = validate_tensorrt(load_onnx(onnx_file))
    if violations:
        click.echo(f"{onnx_file}: {len(violations)} TensorRT rule violation(s):")
        for v in violations:
            click.echo(f"  - {v}")
        sys.exit(1)
    click.echo(f"{onnx_file}: passes the TensorRT rules")


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True)
@click.option("--plan", "plan_value", default=None, help="Plan for the ort-mixed target (default: models/plans/mixed.yaml).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "jetson"]), default="cpu", show_default=True,
              help="Device profile; cuda/jetson need the TensorRT targets.")
@click.option("--targets", default=None, help="Comma-separated subset, e.g. 'ort-fp32,ort-mixed' (default: all for the device).")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Batch size for timing.")
@click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=50, show_default=True, help="Timed rounds per target.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=os.cpu_count() or 1, show_default=True,
              help="Threads for every runtime (equal, non-spinning pools).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"), show_default=True)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON report to this file.")
@click.option("--min-map", type=float, default=None, help="Exit non-zero when an ok target scores below this mAP.")
def bench(model_dir, plan_value, device, targets, batch, eval_images, rounds, warmup, threads, build_dir, results_dir,
          json_file, min_map) -> None:
    """Benchmark every target side by side: size, GFLOPs, latency, FPS, memory, mAP, RefExp, top-k."""
    from vggt_deploy.bench.harness import BenchConfig, results_as_dicts, run_bench
    from vggt_deploy.bench.report import environment, markdown_table, write_reports

    cfg = BenchConfig(model_dir=model_dir, build_dir=build_dir, plans_dir=PLANS_DIR, mixed_plan=_plan_path(plan_value),
                      device=device, targets=tuple(t.strip() for t in targets.split(",")) if targets else (),
                      batch=batch, eval_images=eval_images, warmup=warmup, rounds=rounds, threads=threads)
    rows = results_as_dicts(run_bench(cfg))
    meta = {"environment": environment(), "settings": {"model": str(model_dir), "device": device, "batch": batch,
            "eval_images": eval_images, "rounds": rounds, "warmup": warmup, "threads": threads,
            "command": _command_line(click.get_current_context())}}
    paths = write_reports(rows, meta, results_dir)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(paths["json"].read_text())
    click.echo(markdown_table(rows))
    click.echo(f"\nreports: {', '.join(str(p) for p in paths.values())}")
    if min_map is not None:
        low = [r["name"] for r in rows if r["status"] == "ok" and (r["map"] or 0.0) < min_map]
        if low:
            click.echo(f"below --min-map {min_map}: {', '.join(low)}", err=True)
            sys.exit(1)


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="Model folder (runs in PyTorch; with --onnx it supplies the tokenizer and query encoder).")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None, help="Run this ONNX file with ONNX Runtime.")
@click.option("--image", "image_path", type=click.Path(path_type=Path), required=True)
@click.option("--query", "-q", "queries", multiple=True, required=True,
              help='A class name or referring expression; repeat for several ("red circle").')
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("build/infer"), show_default=True)
def infer(model_dir, onnx_file, image_path, queries, output) -> None:
    """Ground text queries in one image: boxes and scores as JSON, and an annotated PNG."""
    from vggt_deploy.data.preprocess import read_image
    from vggt_deploy.infer import ground, write_outputs
    from vggt_deploy.model.io import load_model

    loaded = load_model(model_dir)
    image = read_image(image_path)
    if onnx_file is not None:
        from vggt_deploy.backends.ort_runner import OrtRunner

        runner = OrtRunner(onnx_file, name=onnx_file.name)
    else:
        from vggt_deploy.backends.torch_runner import TorchRunner

        runner = TorchRunner(model_dir)
    with runner:
        results = ground(runner, loaded, image, list(queries))
    json_path, png_path = write_outputs(output, image_path.stem, image, results)
    for r in results:
        click.echo(f"{r.query!r}: box {r.box} score {r.score:.3f}")
    click.echo(f"wrote {json_path} and {png_path}")


@main.command("eval")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="Model folder (model.safetensors, config.json, vocab.json); with --onnx it supplies the query encoder.")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None,
              help="Evaluate this ONNX file (FP32 or QDQ) with ONNX Runtime on the CPU instead of PyTorch.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="COCO folder to evaluate; default: the synthetic eval split (generated on first use).")
@click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True,
              help="Size of the synthetic eval split, or a limit on --data.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--write-card", is_flag=True, help="Also (re)write MODEL_CARD.md and training_curve.png in the model folder.")
def evaluate_cmd(model_dir: Path, onnx_file: Path | None, data_dir: Path | None, eval_images: int, batch_size: int,
                 as_json: bool, write_card: bool) -> None:
    """Grounding mAP (pycocotools), referring-expression accuracy and top-1/top-5."""
    from vggt_deploy.bench.evaluate import evaluate
    from vggt_deploy.data.coco import load_coco, synthetic_split
    from vggt_deploy.model.io import load_model

    loaded = load_model(model_dir)
    infer = None
    if onnx_file is not None:
        from vggt_deploy.backends.ort_runner import OrtRunner
        from vggt_deploy.bench.evaluate import runner_infer
        from vggt_deploy.export.onnx_export import get_metadata, load_onnx

        meta = get_metadata(load_onnx(onnx_file))
        if meta.get("vggt.config_hash") != loaded.model.cfg.config_hash():
            raise UserError(f"{onnx_file}: exported from config {meta.get('vggt.config_hash', 'unknown')}, but "
                            f"{model_dir} has config {loaded.model.cfg.config_hash()}; pass the matching --model")
        infer = runner_infer(OrtRunner(onnx_file, name=onnx_file.name).activate())
        if write_card:
            raise UserError("--write-card describes a PyTorch model folder; drop --onnx")
    if data_dir is None:
        dataset = load_coco(synthetic_split("eval", eval_images))
        limit = None
    else:
        dataset = load_coco(data_dir)
        limit = eval_images
    metrics = evaluate(loaded, dataset, infer=infer, batch_size=batch_size, limit=limit, progress=not as_json)
    metrics.pop("detections")
    if write_card:
        from vggt_deploy.model.card import write_model_card

        command = "vggt-deploy eval --model " + str(model_dir) + (f" --data {data_dir}" if data_dir else "")
        if data_dir is None and eval_images != 1000:
            command += f" --eval-images {eval_images}"
        write_model_card(model_dir, metrics, command)
    metrics = {"model": str(onnx_file or model_dir), "data": str(dataset.root), **metrics}
    if as_json:
        click.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        click.echo(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")


if __name__ == "__main__":
    main()
