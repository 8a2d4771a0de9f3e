"""`vggt-deploy sensitivity | plan auto`: which layers to keep in higher precision, measured.

Both work on one of this project's models (`--model`, scored by mAP on the eval
split or by output error) or on an ONNX file exported elsewhere (`--onnx`, with
`--data` a folder of held-out images; scored by how far its outputs move from
FP32, since its task metric is unknown).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vggt_deploy.bench.timing import RUNTIMES
from vggt_deploy.cli.app import TARGET_CHOICE, _command_line, main, plan_file, resolve_model
from vggt_deploy.cli.export_cmds import plan
from vggt_deploy.errors import UserError
from vggt_deploy.executor import EXECUTOR_HELP, check_executor
from vggt_deploy.tuning.auto_plan import OBJECTIVES
from vggt_deploy.tuning.units import UNIT_KINDS
from vggt_deploy.tuning.variants import METRICS

_COMMON = [
    click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                 help="Model folder (default: the shipped model)."),
    click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Instead of --model: an FP32 ONNX model exported elsewhere (one image input, preprocessed "
                      "as the plan's calibration.input says, as for `export --onnx`); needs --data, and is ranked "
                      "by output error."),
    click.option("--plan", "plan_value", default="int8", show_default=True,
                 help="Base plan (path or shipped name): what a quantized unit becomes."),
    click.option("--target", type=TARGET_CHOICE, default=None, help="Override the base plan's target (QDQ flavour)."),
    click.option("--unit", "unit_kind", type=click.Choice(UNIT_KINDS), default="block", show_default=True,
                 help="block: patch embedding, each backbone block, each grounding layer, heads, attention matmuls "
                      "(other models: the first part of each layer name, blocks.N for blocks.N.*); "
                      "layer: every MatMul/Gemm/Conv alone."),
    click.option("--units", "unit_names", default="",
                 help="Comma-separated unit names to analyse (others stay as the base plan says)."),
    click.option("--subset-images", "images", type=click.IntRange(1), default=300, show_default=True,
                 help="Held-out images used to rank units (a subset; the answer is confirmed on the full set)."),
    click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True,
                 help="Size of the full eval split (synthetic) used for confirmation; with --onnx, at most this "
                      "many images of --data are used."),
    click.option("--runtime", type=click.Choice(RUNTIMES), default="openvino", show_default=True,
                 help="Where latency savings are timed: plans are tuned on the runtime they are for."),
    click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                 help="COCO folder to evaluate on instead of the synthetic eval split; with --onnx (required): "
                      "a folder of held-out images (not the calibration ones) the outputs are compared on."),
    click.option("--work", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/sensitivity"),
                 show_default=True, help="Where the FP32 export, variant QDQ files and finished variants (results/) go."),
    click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[:ADDRESS]",
                 help=EXECUTOR_HELP),
    click.option("--no-resume", is_flag=True,
                 help="Measure every variant again instead of reusing the ones WORK/results holds."),
]


def _common(fn):
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def _check_source(model_dir: Path | None, onnx_file: Path | None, data_dir: Path | None) -> None:
    """--model and --onnx exclude each other; a foreign model needs held-out images (checked before any work)."""
    if model_dir is not None and onnx_file is not None:
        raise UserError("--model and --onnx exclude each other: give one model")
    if onnx_file is not None and data_dir is None:
        raise UserError("--onnx needs --data: a folder of held-out images to compare the outputs with FP32 on "
                        "(a model exported elsewhere has no task metric here)")


def _executor(spec: str, work_dir: Path, no_resume: bool):
    """The executor `--executor` names, caching finished variants in WORK/results (none with --no-resume)."""
    from vggt_deploy.executor import make_executor

    return make_executor(spec, None if no_resume else work_dir / "results")


def _base_plan(path: Path, target: str | None, runtime: str):
    """The base plan as `runtime` will run it.

    Timed on OpenVINO, an ONNX Runtime CPU plan is read as `openvino-cpu` (the same U8S8 static QDQ) unless
    --target says otherwise, so the units a variant keeps float become bf16 rules, the float OpenVINO runs
    fast. Left fp32, any float unit makes OpenVINO run the whole graph in f32, and every latency saving
    would be timed on a graph no OpenVINO plan ships (measured: 2.7 ms slower, the savings all negative).
    """
    from vggt_deploy.quant.plan import load_plan
    from vggt_deploy.quant.plan_yaml import PlanError

    base = load_plan(path, target=target)
    if runtime != "openvino" or target is not None or base.target != "onnxruntime-cpu":
        return base
    try:
        return load_plan(path, target="openvino-cpu")
    except PlanError as exc:
        raise UserError(f"{exc}\n  (savings timed on OpenVINO need a plan OpenVINO can run: use --runtime onnxruntime "
                        "for this plan)") from None


def _workbench(model_dir, onnx_file, plan_value, target, unit_kind, unit_names, eval_images, data_dir, work_dir,
               runtime):
    _check_source(model_dir, onnx_file, data_dir)
    base = _base_plan(plan_file(plan_value), target, runtime)
    names = [n.strip() for n in unit_names.split(",") if n.strip()]
    if onnx_file is not None:
        from vggt_deploy.tuning.foreign import ForeignWorkbench

        return ForeignWorkbench(onnx_file, base, work_dir, data_dir, unit_kind=unit_kind, units=names,
                                eval_images=eval_images, runtime=runtime)
    from vggt_deploy.tuning.variants import Workbench

    return Workbench(resolve_model(model_dir), base, work_dir, unit_kind=unit_kind, units=names, data_dir=data_dir,
                     eval_images=eval_images, runtime=runtime)


@main.command()
@_common
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="map: mAP@[.5:.95] drop in points (the default with --model); output-error: relative L2 of the "
                   "outputs vs FP32, percent, averaged over outputs (the default, and the only one, with --onnx).")
@click.option("--confirm-top", type=click.IntRange(0), default=3, show_default=True,
              help="Re-score this many top units (and the all-quantized model) on the full eval split.")
@click.option("--latency-rounds", type=click.IntRange(0), default=60, show_default=True,
              help="Alternating timed rounds per variant for the latency savings (0: skip).")
@click.option("--list-units", is_flag=True, help="Print the units of the model and exit.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("build/sensitivity"),
              show_default=True, help="Folder for sensitivity.json, .md and .png.")
def sensitivity(model_dir, onnx_file, plan_value, target, unit_kind, unit_names, images, eval_images, runtime, data_dir,
                work_dir, executor_spec, no_resume, metric, confirm_top, latency_rounds, list_units, output) -> None:
    """Rank units by how much quantizing them costs: each alone quantized, and each alone kept float.

    Writes a ranked table (printed, JSON, Markdown) and a bar chart. The
    calibration range cache is shared with `export`, so no unit recalibrates.

    For a model exported elsewhere, `--onnx FILE --data IMAGES` ranks units by
    output error (relative L2 against FP32) on the held-out images; the JSON
    also keeps each variant's output agreement (worst-image Pearson r included).
    """
    from vggt_deploy.tuning.sensitivity import SensitivityConfig, run_sensitivity
    from vggt_deploy.tuning.sensitivity_report import markdown, write_sensitivity

    if onnx_file is not None and metric == "map":
        raise UserError("--metric map needs one of this project's models (--model); a model exported elsewhere "
                        "has no mAP here: use --metric output-error (the default with --onnx)")
    metric = metric or ("output-error" if onnx_file is not None else "map")
    check_executor(executor_spec)
    bench = _workbench(model_dir, onnx_file, plan_value, target, unit_kind, unit_names, eval_images, data_dir,
                       work_dir, runtime)
    if list_units:
        for unit in bench.all_units:
            click.echo(f"{unit.name:32} {len(unit.layers):3d} layers  match: {unit.pattern}")
        return
    cfg = SensitivityConfig(metric=metric, images=images, confirm_top=confirm_top, latency_rounds=latency_rounds)
    with _executor(executor_spec, work_dir, no_resume) as executor:
        result = run_sensitivity(bench, cfg, executor=executor)
    result.command = _command_line(click.get_current_context())
    paths = write_sensitivity(result.to_json(), output)
    click.echo(markdown(result.to_json()))
    click.echo("written: " + ", ".join(str(p) for p in paths.values()))


@plan.command("auto")
@_common
@click.option("--max-map-drop", type=click.FloatRange(-1.0, 1.0), default=None,
              help="Largest allowed mAP@[.5:.95] drop on the full eval split (0.003 = 0.3 points); --model only.")
@click.option("--max-output-error", type=click.FloatRange(0.0), default=None, metavar="PCT",
              help="Instead of --max-map-drop (and the one budget with --onnx): largest allowed output error, the "
                   "relative L2 of the outputs against FP32 in percent, averaged over outputs, on the full held-out "
                   "set.")
@click.option("--latency-rounds", type=click.IntRange(0), default=60, show_default=True,
              help="Alternating timed rounds per variant for the per-unit latency savings (0: skip).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="latency", show_default=True,
              help="What the plan minimises within the budget (both measured per unit on this machine).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Plan YAML to write (with each rule's measured drop in comments); .json and .md summaries go beside it.")
def plan_auto(model_dir, onnx_file, plan_value, target, unit_kind, unit_names, images, eval_images, runtime, data_dir,
              work_dir, executor_spec, no_resume, max_map_drop, max_output_error, latency_rounds, objective, output) -> None:
    """Choose the cheapest plan whose accuracy loss stays within the budget, verify it, tighten if missed.

    The budget is --max-map-drop (mAP drop on the eval split, --model) or --max-output-error (relative L2 of
    the outputs against FP32, percent; the one budget for --onnx FILE --data IMAGES, a model exported elsewhere).
    Exit status 1 (with the best plan found still written) when no plan meets the budget.
    """
    from vggt_deploy.tuning.auto_plan import AutoConfig, auto_plan
    from vggt_deploy.tuning.sensitivity import SensitivityConfig
    from vggt_deploy.tuning.sensitivity_report import write_sensitivity

    if (max_map_drop is None) == (max_output_error is None):
        raise UserError("give one budget: --max-map-drop (mAP drop) or --max-output-error (output error %)")
    if onnx_file is not None and max_map_drop is not None:
        raise UserError("--max-map-drop needs one of this project's models (--model); a model exported elsewhere "
                        "has no mAP here: use --max-output-error PCT")
    metric = "map" if max_map_drop is not None else "output-error"
    check_executor(executor_spec)
    bench = _workbench(model_dir, onnx_file, plan_value, target, unit_kind, unit_names, eval_images, data_dir,
                       work_dir, runtime)
    cfg = AutoConfig(max_map_drop=max_map_drop, max_output_error=max_output_error, objective=objective,
                     sensitivity=SensitivityConfig(metric=metric, images=images, confirm_top=0,
                                                   latency_rounds=latency_rounds))
    with _executor(executor_spec, work_dir, no_resume) as executor:
        summary = auto_plan(bench, cfg, output, command=_command_line(click.get_current_context()), executor=executor)
    write_sensitivity(summary["sensitivity"].to_json(), work_dir)
    lat = summary["latency_ms"]
    click.echo(f"plan written to {output} (details: {output.with_suffix('.json')}, {output.with_suffix('.md')})")
    click.echo(f"  quantized units: {', '.join(summary['quantized'])}")
    click.echo(f"  float units: {', '.join(summary['float']) or '-'}")
    if metric == "map":
        click.echo(f"  full eval split: FP32 mAP {summary['fp32_map']:.4f}, plan {summary['plan_map']:.4f}, "
                   f"drop {summary['drop_points'] / 100:.4f} ({summary['drop_points']:+.2f} points; budget "
                   f"{summary['budget_points'] / 100:.4f})")
    else:
        click.echo(f"  full held-out set ({summary['eval_images']} images): output error "
                   f"{summary['plan_output_error']:.3f}% (budget {summary['budget_pct']:.3f}%)")
    click.echo(f"  latency ({bench.runtime} CPU, batch 1): FP32 {lat['fp32']:.2f} ms, base plan {lat['base']:.2f} ms, "
               f"this plan {lat['auto']:.2f} ms ({lat['auto'] / lat['base']:.2f}x the base)")
    if not summary["met"]:
        if metric == "map":
            click.echo(f"budget not met: no plan found within a {summary['budget_points'] / 100:.4f} mAP drop; "
                       f"wrote the best plan found (measured drop {summary['drop_points'] / 100:.4f})", err=True)
        else:
            click.echo(f"budget not met: no plan found within a {summary['budget_pct']:.3f}% output error; "
                       f"wrote the best plan found (measured {summary['plan_output_error']:.3f}%)", err=True)
        sys.exit(1)
