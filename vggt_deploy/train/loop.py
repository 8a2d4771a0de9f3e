"""The training loop: seeded, logged, checkpointed as safetensors, resumable.

Batch order and referring-expression sampling are pure functions of
(seed, step), so a run resumed from a checkpoint sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vggt_deploy.data.vocabulary import all_words, category_names
from vggt_deploy.errors import UserError
from vggt_deploy.model.config import VGGTConfig
from vggt_deploy.model.io import atomic_write_text, load_tensors, save_model, save_tensors
from vggt_deploy.model.query_encoder import WordTokenizer
from vggt_deploy.model.vggt import VGGT, create_model
from vggt_deploy.train.data import TrainData
from vggt_deploy.train.losses import Batch, LossWeights, blended_loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model's own config is separate)."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 4e-4
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 300
    grad_clip: float = 1.0
    refs_per_image: int = 2
    seed: int = 0
    bf16: bool = True
    log_every: int = 50
    checkpoint_every: int = 500
    loss: LossWeights = field(default_factory=LossWeights)


def seed_everything(seed: int) -> None:
    """Fix Python, NumPy and torch generators (recorded in the model config)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_indices(step: int, n: int, cfg: TrainConfig) -> np.ndarray:
    """Images of `step`: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = max(1, n // cfg.batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    return perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]


def make_batch(data: TrainData, idx: np.ndarray, step: int, cfg: TrainConfig, model: VGGT, tokenizer: WordTokenizer) -> Batch:
    rng = np.random.default_rng([cfg.seed, 1, step])
    ref_image, ref_object, sentences = [], [], []
    for b, i in enumerate(idx):
        refs = data.refs[i]
        for k in rng.permutation(len(refs))[: cfg.refs_per_image]:
            ref_image.append(b)
            ref_object.append(refs[k][1])
            sentences.append(refs[k][0])
    ref_queries = (model.encode_queries(tokenizer.encode(sentences, model.cfg.max_query_len))
                   if sentences else torch.zeros(0, model.cfg.ground_dim))
    return Batch(
        images=data.images[idx].float(),
        gt_boxes=[data.boxes[i] for i in idx],
        gt_labels=[data.labels[i] for i in idx],
        image_labels=data.image_labels[idx],
        ref_image=torch.tensor(ref_image, dtype=torch.long),
        ref_object=torch.tensor(ref_object, dtype=torch.long),
        ref_queries=ref_queries,
    )


def save_checkpoint(
    ckpt: Path, model: VGGT, tokenizer: WordTokenizer, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig
) -> None:
    """A checkpoint is a complete model folder (evaluable as is) plus optimizer state."""
    save_model(model, tokenizer, ckpt, extra={"checkpoint_step": step})
    tensors, scalars = {}, {}
    for pid, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    save_tensors(tensors, ckpt / "optimizer.safetensors")
    atomic_write_text(ckpt / "state.json", json.dumps({"step": step, "train_config": asdict(cfg), "scalars": scalars}) + "\n")


def load_checkpoint(ckpt: Path, model: VGGT, opt: torch.optim.Optimizer, cfg: TrainConfig) -> int:
    state = json.loads((ckpt / "state.json").read_text())
    if state["train_config"] != json.loads(json.dumps(asdict(cfg))):
        raise UserError(f"{ckpt / 'state.json'}: checkpoint was written with other training settings; "
                        "resume with the same options or start a new output folder")
    model.load_state_dict(load_tensors(ckpt / "model.safetensors"))
    tensors = load_tensors(ckpt / "optimizer.safetensors")
    opt_state = opt.state_dict()
    restored: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        restored.setdefault(int(pid), {})[key] = value
    for name, value in state["scalars"].items():
        pid, key = name.split(".", 1)
        restored.setdefault(int(pid), {})[key] = value
    opt_state["state"] = restored
    opt.load_state_dict(opt_state)
    return int(state["step"])


def default_tokenizer(extra_texts: list[str] = ()) -> WordTokenizer:
    words = set(all_words())
    for text in extra_texts:
        words.update(WordTokenizer.split(text))
    return WordTokenizer(sorted(words))


def train(
    model_cfg: VGGTConfig,
    data: TrainData,
    cfg: TrainConfig,
    out_dir: str | Path,
    categories: list[str] | None = None,
    resume: bool = False,
    extra_meta: dict | None = None,
    stop_at: int | None = None,
) -> Path:
    """Train a VGGT and write the model folder to `out_dir` (checkpoints under out_dir/checkpoint).

    `stop_at` ends the run early after that step's checkpoint (a time-boxed
    chunk); `resume=True` continues from the checkpoint exactly where it stopped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    categories = categories or category_names()
    tokenizer = default_tokenizer(categories + [s for refs in data.refs for s, _ in refs])
    model_cfg = VGGTConfig.from_dict({**model_cfg.to_dict(), "vocab_size": len(tokenizer), "num_classes": len(categories)})
    seed_everything(cfg.seed)
    model = create_model(model_cfg).train()
    opt = torch.optim.AdamW(weight_groups(model.named_parameters(), cfg.weight_decay),
                            lr=cfg.lr, betas=(0.9, 0.98))
    ckpt = out_dir / "checkpoint"
    log_path = out_dir / "train_log.jsonl"
    start = 0
    if resume:
        if not (ckpt / "state.json").is_file():
            raise UserError(f"{ckpt}: no checkpoint to resume from")
        start = load_checkpoint(ckpt, model, opt, cfg)
    elif log_path.exists():
        log_path.unlink()
    cat_ids = tokenizer.encode(categories, model_cfg.max_query_len)
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="training", unit="step")
    for step in bar:
        parts = train_step(model, opt, data, step, cfg, tokenizer, cat_ids)
        bar.set_postfix(loss=f"{parts['total']:.3f}")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "lr": lr_at(step, cfg), "elapsed_s": round(time.time() - t0, 1), **parts}) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1 or step + 1 == stop_at:
            save_checkpoint(ckpt, model, tokenizer, opt, step + 1, cfg)
        if step + 1 == stop_at:
            break
    meta = {"train": {**asdict(cfg), "seeds": {"python": cfg.seed, "numpy": cfg.seed, "torch": cfg.seed}}, **(extra_meta or {})}
    return save_model(model.eval(), tokenizer, out_dir, extra=meta)


def weight_groups(named_params, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices, none on biases, norms and the grounding tokens."""
    decay, no_decay = [], []
    for name, p in named_params:
        (decay if p.ndim >= 2 and "grounding_tokens" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_step(model: VGGT, opt: torch.optim.Optimizer, data: TrainData, step: int, cfg: TrainConfig,
               tokenizer: WordTokenizer, cat_ids: torch.Tensor) -> dict:
    """One optimisation step of the blended loss (shared by training and quantization-aware training).

    Every parameter group's learning rate follows the schedule, times its own ``lr_scale`` (default 1).
    """
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        batch = make_batch(data, batch_indices(step, len(data), cfg), step, cfg, model, tokenizer)
        cat_queries = model.encode_queries(cat_ids)
        feats = model.forward_features(batch.images)
    loss, parts = blended_loss(model, feats, cat_queries.float(), _float_refs(batch), cfg.loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return parts


def _float_refs(batch: Batch) -> Batch:
    batch.ref_queries = batch.ref_queries.float()
    return batch
