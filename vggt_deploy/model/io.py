"""Model folders: safetensors weights checked by sha256, config and vocabulary as JSON.

A model folder holds::

    model.safetensors   weights (no pickle anywhere)
    config.json         {"config": VGGTConfig fields, "weights_sha256": ..., "config_hash": ...}
    vocab.json          the tokenizer vocabulary

Loading recomputes the weights' sha256 and refuses a mismatch, so a corrupted
or swapped file never runs silently.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_text, sha256_file
from vggt_deploy.model.config import VGGTConfig
from vggt_deploy.model.query_encoder import WordTokenizer
from vggt_deploy.model.vggt import VGGT, create_model

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"


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
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected the safetensors weights file")
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if expected_sha256 is not None:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read the weights ({exc.strerror or exc})") from None
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
    meta = _read_config_json(config_path)
    cfg = VGGTConfig.from_dict(meta["config"], source=str(config_path))
    tokenizer = WordTokenizer.load(model_dir / VOCAB)
    if len(tokenizer) != cfg.vocab_size:
        raise UserError(f"{model_dir / VOCAB}: {len(tokenizer)} words, but the config says vocab_size={cfg.vocab_size}")
    weights = model_dir / WEIGHTS
    state = load_tensors(weights, meta["weights_sha256"].lower())
    if _saved_config_hash(weights) != cfg.config_hash() and _estimated_bytes(cfg) > 4 * weights.stat().st_size + 2**28:
        # config.json differs from the config these weights were saved with and describes a far larger
        # model: check the shapes on the meta device, so a typo never allocates what does not fit in memory
        with torch.device("meta"):
            _check_shapes(create_model(cfg), state, weights, cfg)
    model = create_model(cfg)
    _check_shapes(model, state, weights, cfg)
    model.load_state_dict(state)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, meta=meta, path=model_dir)


def _read_config_json(config_path: Path) -> dict:
    """config.json as a dict with a 'config' object and a 64-hex 'weights_sha256'."""
    if config_path.is_dir():
        raise UserError(f"{config_path}: is a folder; expected the model's JSON config file")
    if config_path.exists() and not config_path.is_file():  # a FIFO or device would block the read
        raise UserError(f"{config_path}: not a regular file (a pipe, socket or device)")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{config_path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{config_path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{config_path}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(meta, dict) or "config" not in meta or "weights_sha256" not in meta:
        raise UserError(f"{config_path}: expected fields 'config' and 'weights_sha256'")
    sha = meta["weights_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise UserError(f"{config_path}: 'weights_sha256' must be the 64-hex-digit sha256 of {WEIGHTS}, "
                        f"got {json.dumps(sha)[:80]}")
    return meta


def _estimated_bytes(cfg: VGGTConfig) -> int:
    """A generous estimate of the float32 parameters `create_model(cfg)` allocates."""
    d, dq = cfg.embed_dim, cfg.query_dim
    block = int((4 + 2 * cfg.mlp_ratio) * d * d)
    params = (cfg.depth + 3 * len(cfg.grounding_layers)) * block + 8 * d * d
    params += cfg.query_depth * 12 * dq * dq + (cfg.vocab_size + cfg.max_query_len + cfg.ground_dim) * dq
    params += (2 * cfg.num_classes + 2 + cfg.ground_dim + cfg.num_grounding_tokens) * d
    return 4 * params


def _saved_config_hash(weights: Path) -> str | None:
    """The config hash save_model wrote into the safetensors header, if any."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("config_hash")
    except (SafetensorError, OSError):
        return None


def _check_shapes(model: VGGT, state: dict[str, torch.Tensor], weights: Path, cfg: VGGTConfig) -> None:
    """Refuse weights that do not fit the config: missing, unexpected or differently shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not fit config {cfg.name} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [f"{k}: {list(state[k].shape)} in the file, {list(v.shape)} from the config"
             for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if not wrong:
        wrong = [f"{k}: {state[k].dtype} in the file, {v.dtype} from the config" for k, v in expected.items()
                 if state[k].dtype.is_floating_point != v.dtype.is_floating_point or state[k].is_complex()]
    if wrong:
        raise UserError(f"{weights}: {len(wrong)} tensor(s) do not fit config {cfg.name} "
                        f"({'; '.join(wrong[:3])}); restore the config.json saved with these weights")
