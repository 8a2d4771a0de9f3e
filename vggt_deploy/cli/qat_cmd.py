"""`vggt-deploy qat`: quantization-aware fine-tuning with a plan, written as a model folder."""

from __future__ import annotations

from pathlib import Path

import click

from vggt_deploy.cli.app import TARGET_CHOICE, _command_line, main, plan_file, resolve_model


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder to fine-tune [default: the shipped models/vggt_small].")
@click.option("--plan", "plan_value", required=True,
              help="Plan (YAML path or shipped name): the fake quantizers go exactly where its export quantizes.")
@click.option("--target", type=TARGET_CHOICE, default=None, help="Override the plan's target (QDQ flavour).")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True, help="Fine-tuning steps.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-5, show_default=True,
              help="Peak learning rate of the weights (warm-up, cosine decay).")
@click.option("--scale-lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate of the learned activation scales (log-parameterised).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds Python, NumPy and torch; recorded.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--train-images", type=click.IntRange(1), default=4096, show_default=True,
              help="Synthetic training scenes rendered for the fine-tune.")
@click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True,
              help="Synthetic eval split for the FP32 / PTQ / QAT metrics in the card.")
@click.option("--no-bf16", is_flag=True, help="Fine-tune in float32 instead of bfloat16 autocast.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint (same options).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="QAT model folder to write (weights, learned scales, config, MODEL_CARD.md).")
def qat(model_dir, plan_value, target, steps, lr, scale_lr, seed, batch_size, train_images, eval_images, no_bf16,
        resume, output) -> None:
    """Quantization-aware training: fine-tune with fake quantization placed by the plan, learn the scales.

    Export the result with `vggt-deploy export --model OUTPUT --plan PLAN`: its QDQ model
    carries the learned scales, with no recalibration. The card gives FP32, PTQ and QAT mAP.
    """
    from vggt_deploy.quant.plan import load_plan
    from vggt_deploy.tuning.qat import QatConfig, run_qat

    plan = load_plan(plan_file(plan_value), target=target)
    cfg = QatConfig(steps=steps, lr=lr, scale_lr=scale_lr, seed=seed, batch_size=batch_size,
                    train_images=train_images, bf16=not no_bf16)
    summary = run_qat(resolve_model(model_dir), plan, cfg, output, resume=resume, eval_images=eval_images,
                      command=_command_line(click.get_current_context()))
    m = summary["metrics"]
    click.echo(f"QAT model written to {output} ({summary['train_minutes']:.1f} min of fine-tuning)")
    for k in ("fp32", "ptq", "qat"):
        click.echo(f"  {k.upper():4} mAP {m[k]['map']:.4f}  ({100 * (m['fp32']['map'] - m[k]['map']):+.2f} points)  "
                   f"RefExp {m[k]['refexp_acc']:.4f}")
