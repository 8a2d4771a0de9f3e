"""Model folders: safetensors weights checked by sha256, config and vocabulary as JSON.

A model folder holds::

    model.safetensors   weights (no pickle anywhere)
    config.json         {"config": VGGTConfig fields, "weights_sha256": ..., "config_hash": ...}
    vocab.json          the tokenizer vocabulary

Loading recomputes the weights' sha256 and refuses a mismatch, so a corrupted
or swapped file never runs silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_text
from vggt_deploy.model.config import VGGTConfig
from vggt_deploy.model.query_encoder import WordTokenizer
from vggt_deploy.model.vggt import VGGT, create_model

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors atomically; returns the file's sha256."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(path)


def load_tensors(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors, checking the sha256 first when one is given."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise UserError(
                f"{path}: sha256 mismatch (expected {expected_sha256[:12]}..., got {actual[:12]}...); "
                "the file is corrupted or does not belong to this config"
            )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


def save_model(model: VGGT, tokenizer: WordTokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write a model folder (weights, config with sha256, vocabulary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_tensors(model.state_dict(), out_dir / WEIGHTS, metadata={"config_hash": model.cfg.config_hash()})
    tokenizer.save(out_dir / VOCAB)
    meta = {"config": model.cfg.to_dict(), "config_hash": model.cfg.config_hash(), "weights_sha256": sha, **(extra or {})}
    atomic_write_text(out_dir / CONFIG, json.dumps(meta, indent=2) + "\n")
    return out_dir


@dataclass
class LoadedModel:
    model: VGGT
    tokenizer: WordTokenizer
    meta: dict
    path: Path


def load_model(model_dir: str | Path) -> LoadedModel:
    """Load a model folder in eval mode; every failure is a one-line UserError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: model folder not found (expected {WEIGHTS}, {CONFIG}, {VOCAB} inside)")
    config_path = model_dir / CONFIG
    try:
        meta = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{config_path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "config" not in meta or "weights_sha256" not in meta:
        raise UserError(f"{config_path}: expected fields 'config' and 'weights_sha256'")
    cfg = VGGTConfig.from_dict(meta["config"], source=str(config_path))
    tokenizer = WordTokenizer.load(model_dir / VOCAB)
    if len(tokenizer) != cfg.vocab_size:
        raise UserError(f"{model_dir / VOCAB}: {len(tokenizer)} words, but the config says vocab_size={cfg.vocab_size}")
    state = load_tensors(model_dir / WEIGHTS, meta["weights_sha256"])
    model = create_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{model_dir / WEIGHTS}: weights do not fit config {cfg.name} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, meta=meta, path=model_dir)
