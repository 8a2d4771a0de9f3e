"""`vggt-deploy qat`: quantization-aware fine-tuning with the same plan the export uses.

1. Export the model and quantize it with the plan (post-training quantization, PTQ): this
   gives the FP32 graph the plan is resolved on, the calibrated ranges (the shared range
   cache) and the PTQ model to compare with.
2. Attach fake quantizers exactly where that export quantizes (`quant/fake_quant.py`),
   activation scales initialised from the calibrated ranges and learned (LSQ).
3. Fine-tune with the training loss on the synthetic train split (`train.loop.train_step`,
   bf16 autocast), checkpointing so an interrupted run resumes (`--resume`).
4. Write a model folder: the fine-tuned weights (an ordinary model folder), the learned
   quantizers (`qat_scales.safetensors`, sha256 in config.json), and MODEL_CARD.md with the
   command, seed, steps and the measured FP32 / PTQ / QAT metrics. `export --model OUT --plan
   PLAN` then writes QDQ ONNX with the learned scales and no recalibration.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vggt_deploy.outputs import OutputFolder, check_output_path
from vggt_deploy.quant.plan import QdqPlan


@dataclass(frozen=True)
class QatConfig:
    """Fine-tuning settings: short, small learning rate for the weights, a larger one for the scales."""

    steps: int = 300
    lr: float = 2e-5
    scale_lr: float = 1e-3
    seed: int = 0
    batch_size: int = 32
    train_images: int = 4096
    bf16: bool = True
    checkpoint_every: int = 50
    log_every: int = 10


def _checkpoint_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.qat-checkpoint"


def _ranges(cache_file: str) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(cache_file)
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}


def evaluate_file(loaded, dataset, path: Path) -> dict:
    """mAP and RefExp accuracy of an ONNX file (ONNX Runtime CPU, the `eval --onnx` path)."""
    from vggt_deploy.backends.onnxruntime.runner import OrtRunner
    from vggt_deploy.bench.evaluate import evaluate, runner_infer

    with OrtRunner(path, name=path.stem) as runner:
        m = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=32, progress=False)
    return {"map": m["map"], "map50": m["map50"], "refexp_acc": m["refexp_acc"]}


def run_qat(model_dir: Path, plan: QdqPlan, cfg: QatConfig, out_dir: Path, resume: bool = False,
            eval_images: int = 1000, command: str = "") -> dict:
    """Fine-tune `model_dir` under `plan`'s quantization; write the QAT model folder; return the summary."""
    import onnx
    import torch

    from vggt_deploy.compile import export_from_model
    from vggt_deploy.data.coco import load_coco, synthetic_split
    from vggt_deploy.data.vocabulary import category_names
    from vggt_deploy.errors import UserError
    from vggt_deploy.model.io import load_model, save_model
    from vggt_deploy.quant.fake_quant import attach_fake_quant, detach_fake_quant
    from vggt_deploy.quant.qat_folder import plan_signature, save_qat_scales
    from vggt_deploy.quant.resolved import resolve_plan
    from vggt_deploy.train.data import synthetic_train_data
    from vggt_deploy.train.loop import (
        TrainConfig,
        load_checkpoint,
        save_checkpoint,
        seed_everything,
        train_step,
        weight_groups,
    )

    out_dir, model_dir = Path(out_dir), Path(model_dir)
    plan_path = Path(plan.source) if Path(plan.source).is_file() else None
    check_output_path(out_dir, [model_dir, plan_path], folder=True)
    ckpt = _checkpoint_dir(out_dir)
    if resume and not (ckpt / "state.json").is_file():
        raise UserError(f"{ckpt}: no QAT checkpoint to resume from (run without --resume)")
    loaded = load_model(model_dir)
    with tempfile.TemporaryDirectory(prefix="vggt-qat.") as tmp:
        ptq = export_from_model(model_dir, Path(tmp) / "ptq", plan)
        fp32 = onnx.load(str(ptq.fp32))
        resolved = resolve_plan(plan, fp32)
        ranges = _ranges(ptq.report["calibration"]["cache"])
        tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10),
                           seed=cfg.seed, bf16=cfg.bf16, log_every=cfg.log_every,
                           checkpoint_every=cfg.checkpoint_every)
        seed_everything(cfg.seed)
        model = loaded.model.train()
        qat = attach_fake_quant(model, resolved, fp32, ranges)
        model.qat_scales = qat.act  # registered while training: optimiser, clipping and checkpoints see the scales
        # The query encoder runs in PyTorch, unquantized, and `eval --onnx` encodes queries with the model
        # folder it is given: kept frozen, the QAT model's queries are the original model's.
        model.query_encoder.requires_grad_(False)
        scales = list(qat.act.parameters())
        ids = {id(p) for p in scales}
        weights = [(n, p) for n, p in model.named_parameters() if id(p) not in ids and p.requires_grad]
        opt = torch.optim.AdamW([*weight_groups(weights, tcfg.weight_decay),
                                 {"params": scales, "weight_decay": 0.0, "lr_scale": cfg.scale_lr / cfg.lr}],
                                lr=cfg.lr, betas=(0.9, 0.98))
        start = load_checkpoint(ckpt, model, opt, tcfg) if resume else 0
        data = synthetic_train_data(cfg.train_images, model.cfg.preprocess)
        cat_ids = loaded.tokenizer.encode(category_names(), model.cfg.max_query_len)
        log: list[dict] = json.loads((ckpt / "log.json").read_text()) if resume else []
        t0 = time.time()
        for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="QAT", unit="step"):
            parts = train_step(model, opt, data, step, tcfg, loaded.tokenizer, cat_ids)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.append({"step": step, "loss": parts["total"], "elapsed_s": round(time.time() - t0, 1)})
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(ckpt, model, loaded.tokenizer, opt, step + 1, tcfg)
                (ckpt / "log.json").write_text(json.dumps(log))
        minutes = (time.time() - t0) / 60
        del model.qat_scales
        detach_fake_quant(model)
        model.eval()
        dataset = load_coco(synthetic_split("eval", eval_images))
        with OutputFolder(out_dir) as folder:
            sha = save_qat_scales(folder, qat)
            summary = {"plan": _plan_name(plan), "plan_hash": plan.plan_hash(), "plan_signature": plan_signature(resolved),
                       "scales_sha256": sha, "config": asdict(cfg), "command": command, "train_minutes": minutes,
                       "source_model": model_dir.name, "loss_log": log}
            save_model(model, loaded.tokenizer, folder, extra={"qat": summary})
            qat_export = export_from_model(folder, Path(tmp) / "qat", plan)
            original = load_model(model_dir)  # `loaded` was fine-tuned in place
            metrics = {"fp32": evaluate_file(original, dataset, ptq.fp32),
                       "ptq": evaluate_file(original, dataset, ptq.qdq),
                       "qat": evaluate_file(load_model(folder), dataset, qat_export.qdq)}
            summary["metrics"] = metrics
            save_model(model, loaded.tokenizer, folder, extra={"qat": summary})
            _write_card(folder, summary, eval_images)
    shutil.rmtree(ckpt, ignore_errors=True)  # written by this run; the model folder now holds the result
    return summary


def _plan_name(plan: QdqPlan) -> str:
    """A shipped plan by its short name (what `--plan` takes anywhere), another one by its path."""
    from vggt_deploy.paths import shipped_plan, shipped_plan_names

    for name in shipped_plan_names():
        path = shipped_plan(name)
        if path is not None and Path(plan.source).resolve() == Path(path).resolve():
            return name
    return plan.source


def _write_card(folder: Path, s: dict, eval_images: int) -> None:
    from vggt_deploy.fileio import atomic_write_text

    cfg, m = s["config"], s["metrics"]
    rows = "\n".join(f"| {k.upper()} | {v['map']:.4f} | {100 * (m['fp32']['map'] - v['map']):+.2f} | "
                     f"{v['refexp_acc']:.4f} |" for k, v in m.items())
    atomic_write_text(folder / "MODEL_CARD.md", f"""# Quantization-aware fine-tune of {s['source_model']}

Plan: `{s['plan']}` (hash {s['plan_hash']}). Command: `{s['command'] or 'vggt-deploy qat'}`.
Seed {cfg['seed']}, {cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']} (scales {cfg['scale_lr']}),
bf16 autocast {cfg['bf16']}, {cfg['train_images']} synthetic train images; {s['train_minutes']:.1f} min on this machine.
Learned quantizers: `qat_scales.safetensors` (sha256 {s['scales_sha256']}); weights: `model.safetensors`.

Export with `vggt-deploy export --model <this folder> --plan {s['plan']}`: the QDQ model carries the
learned scales (no recalibration).

Measured on the synthetic eval split ({eval_images} images), ONNX Runtime CPU:

| model | mAP@[.5:.95] | drop (points) | RefExp acc |
|---|---|---|---|
{rows}
""")
