"""Model cards: what a shipped model is, how it was made, and what it measured.

The card is regenerated from the model folder itself (config, training
settings, sha256, train_log.jsonl) plus an evaluation, so its numbers are never
typed by hand. `vggt-deploy eval --write-card` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from vggt_deploy.fileio import atomic_save_figure, sha256_file
from vggt_deploy.model.io import CONFIG, WEIGHTS, atomic_write_text

CARD = "MODEL_CARD.md"
CURVE = "training_curve.png"


def plot_training_curve(model_dir: Path) -> Path | None:
    """Plot train_log.jsonl (total and per-term losses) to training_curve.png."""
    log = model_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("total", "focal", "l1", "giou", "ground", "image_ce", "dense_ce"):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key, linewidth=1.5 if key == "total" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (summed over grounding layers)")
    ax.set_title(f"training curve: {model_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    out = model_dir / CURVE
    atomic_save_figure(fig, out)
    plt.close(fig)
    return out


def _wall_time(model_dir: Path) -> str:
    log = model_dir / "train_log.jsonl"
    if not log.is_file():
        return "not recorded"
    last = json.loads(log.read_text().splitlines()[-1])
    return f"{last['elapsed_s'] / 60:.0f} min for {last['step'] + 1} steps on this repository's 2-core CPU machine"


def write_model_card(model_dir: str | Path, metrics: dict, eval_command: str) -> Path:
    """Write MODEL_CARD.md for `model_dir` from its files and `metrics` (an eval result)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / CONFIG).read_text())
    cfg, train = meta["config"], meta.get("train", {})
    curve = plot_training_curve(model_dir)
    size_mb = (model_dir / WEIGHTS).stat().st_size / 1e6
    lines = [
        f"# Model card: {cfg['name']}",
        "",
        "A VGGT grounding model: a ViT whose geometry-grounding tokens (one per reference box on a grid)",
        "exchange information with the image through two-way cross-attention, and answer text queries",
        "(class names or referring expressions) with boxes.",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS}`: {size_mb:.1f} MB, sha256 `{sha256_file(model_dir / WEIGHTS)}`",
        f"- `{CONFIG}`: architecture, config hash `{meta['config_hash']}`, training settings",
        "- `vocab.json`: the query tokenizer's vocabulary",
        "",
        "## Architecture",
        "",
        f"- input {cfg['image_size']}x{cfg['image_size']} RGB, normalised with mean {cfg['mean']} / std {cfg['std']}",
        f"- convolutional patch embedding, stride {cfg['patch_stride']} ({(cfg['image_size'] // cfg['patch_stride']) ** 2} tokens)",
        f"- {cfg['depth']} blocks, width {cfg['embed_dim']}, {cfg['num_heads']} heads (head dim {cfg['embed_dim'] // cfg['num_heads']}), qk-norm {cfg['qk_norm']}",
        f"- {cfg['num_grounding_tokens']} grounding tokens, grounding layers after blocks {cfg['grounding_layers']}",
        f"- query encoder: width {cfg['query_dim']}, {cfg['query_depth']} blocks; joint embedding {cfg['ground_dim']}",
        "",
        "## Training",
        "",
        f"- data: {meta.get('data', 'unknown')} (scenes of the `train` split, seed 1000; eval uses seed 3000, calibration seed 2000)",
        f"- seed {train.get('seed')} (Python, NumPy and torch), {train.get('steps')} steps, batch {train.get('batch_size')}, "
        f"AdamW lr {train.get('lr')}, warm-up {train.get('warmup_steps')}, cosine decay, bf16 autocast {train.get('bf16')}",
        f"- loss weights: {json.dumps(train.get('loss', {}))}",
        f"- command: `{meta.get('train_command', 'not recorded')}` (its output folder's model.safetensors, config.json, "
        "vocab.json and train_log.jsonl are what this folder holds)",
        f"- wall time: {_wall_time(model_dir)}",
    ]
    if curve:
        lines += ["", f"![training curve]({CURVE})"]
    keys = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "refexp_acc", "top1", "top5")
    lines += [
        "",
        "## Evaluation",
        "",
        f"Measured by `{eval_command}` on {metrics['num_images']} images of the eval split "
        f"({metrics['num_refs']} referring expressions), FP32 PyTorch on CPU.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {metrics[k]:.4f} |" for k in keys],
        "",
        "mAP is pycocotools' COCOeval over the 18 category queries; refexp_acc counts an expression as",
        "correct when its top-1 box has IoU >= 0.5 with the referred object; top-1/top-5 classify the",
        "category of the largest object in the image.",
        "",
        "## Limits",
        "",
        "Trained only on synthetic scenes (3 shapes x 6 colours x 3 sizes on textured, noisy backgrounds).",
        "It does not transfer to natural images; it is a deployment-pipeline reference model.",
        "",
    ]
    path = model_dir / CARD
    atomic_write_text(path, "\n".join(lines))
    return path
