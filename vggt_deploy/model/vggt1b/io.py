"""Build a VGGT-1B port and load reference checkpoints into it, strictly and without pickle.

Accepted weight files:
    * ``.safetensors`` (the public ``facebook/VGGT-1B`` ``model.safetensors``), read with
      ``safetensors.torch.load_file``;
    * ``.pt`` / ``.pth`` state dicts, read with ``torch.load(weights_only=True)`` (tensors and
      plain containers only; nothing is unpickled beyond that). A dict wrapping the state dict
      under ``"model"`` (a training checkpoint) is unwrapped.

Loading is strict: every model key must be present with the same shape and no other key
may be left over, with one documented exception: keys under ``track_head.`` are dropped
when the model has no track head (the port does not implement point tracking, while the
public checkpoint, built with the reference's default ``enable_track=True``, stores it).
Anything else raises ``UserError`` naming the first few missing, unexpected or misshapen
keys and what to do.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from vggt_deploy.errors import UserError
from vggt_deploy.model.vggt1b.config import VGGT1BConfig, get_vggt1b_config
from vggt_deploy.model.vggt1b.model import VGGT1B

TRACK_HEAD_PREFIX = "track_head."
_SHOWN = 5  # keys quoted per category in an error message


@dataclass(frozen=True)
class LoadReport:
    """What a load did: tensors read, tensors loaded, and the track-head keys that were dropped."""

    path: Path
    num_read: int
    num_loaded: int
    dropped_track_head_keys: int


def create_vggt1b(cfg: VGGT1BConfig | str = "vggt_1b", seed: int = 0) -> VGGT1B:
    """A VGGT1B in eval mode with fresh (untrained) weights; `cfg` may be a registry name.

    The random weights are a function of `seed` (the global RNG is left as it was), so an export made
    without a checkpoint and a PyTorch reference built later hold the same model.
    """
    if isinstance(cfg, str):
        cfg = get_vggt1b_config(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VGGT1B(cfg).eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pt/.pth file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
            # weights_only=True answers anything but tensors and plain containers with UnpicklingError
            raise UserError(f"{path}: cannot read as a weights-only PyTorch checkpoint ({exc}); "
                            "convert it to .safetensors or to a plain state dict") from None
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{path}: expected a state dict of tensors (optionally under 'model')")
        return obj
    raise UserError(f"{path}: unsupported weights format {suffix or '(no suffix)'!r}; use .safetensors, .pt or .pth")


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_vggt1b_weights(model: VGGT1B, path: str | Path) -> LoadReport:
    """Load a reference checkpoint into `model` (in place) with strict key and shape checks."""
    path = Path(path)
    state = read_state_dict(path)
    num_read = len(state)
    dropped = 0
    if not hasattr(model, "track_head"):
        track_keys = [k for k in state if k.startswith(TRACK_HEAD_PREFIX)]
        for key in track_keys:
            del state[key]
        dropped = len(track_keys)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if misshapen:
            parts.append(f"{len(misshapen)} with another shape (file vs model): {_listing(misshapen)}")
        raise UserError(
            f"{path}: the weights do not fit config {model.cfg.name!r} ({'; '.join(parts)}). Build the model "
            "with the config the checkpoint was trained with (the public facebook/VGGT-1B weights need "
            "get_vggt1b_config('vggt_1b')) and pass the full model state dict, not a sub-module's")
    model.load_state_dict(state, strict=True)
    return LoadReport(path=path, num_read=num_read, num_loaded=len(state), dropped_track_head_keys=dropped)
