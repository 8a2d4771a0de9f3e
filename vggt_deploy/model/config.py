"""VGGT configuration and the registry of named configs.

A config fully determines the architecture and the preprocessing; its hash
(`config_hash`) travels with the weights and into exported files so later steps
can check what they were given.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError

# Inclusive ranges of the integer fields. The upper bounds are far above any model this project
# builds; they stop a typo (embed_dim: 25600) from allocating hundreds of GB before a shape check.
INT_RANGES: dict[str, tuple[int, int]] = {
    "image_size": (1, 4096), "patch_stride": (2, 1024), "embed_dim": (8, 16384), "depth": (1, 256),
    "num_heads": (1, 1024), "num_grounding_tokens": (1, 4096), "ground_dim": (1, 16384), "query_dim": (1, 16384),
    "query_depth": (0, 256), "query_heads": (1, 1024), "max_query_len": (1, 4096), "num_classes": (1, 1_000_000),
    "vocab_size": (2, 10_000_000),
}
MLP_RATIO_MAX = 64.0
MAX_PRIOR_ELEMENTS = 2**24  # grounding tokens x patches: the spatial prior buffers


def _json_type(value: object) -> str:
    """How a value reads in JSON terms, for messages ("a string '4'", "true", "a list")."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return f"a string {value[:40]!r}"
    if isinstance(value, (list, tuple)):
        try:
            text = json.dumps(list(value))
        except (TypeError, ValueError):
            text = ""
        return text if text and len(text) <= 60 else f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:40]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def config_problem(values: dict) -> str | None:
    """The first thing wrong with a config's field values (types and ranges first), or None."""
    name = values.get("name")
    if not isinstance(name, str) or not name.strip():
        return f"field 'name' must be a non-empty string, got {_json_type(name)}"
    for key, (low, high) in INT_RANGES.items():
        value = values[key]
        if not _is_int(value) or not low <= value <= high:
            return f"field {key!r} must be an integer in {low}..{high}, got {_json_type(value)}"
    ratio = values["mlp_ratio"]
    if not _is_finite_number(ratio) or not 0 < ratio <= MLP_RATIO_MAX:
        return f"field 'mlp_ratio' must be a finite number in (0, {MLP_RATIO_MAX:g}], got {_json_type(ratio)}"
    if not isinstance(values["qk_norm"], bool):
        return f"field 'qk_norm' must be true or false, got {_json_type(values['qk_norm'])}"
    layers = values["grounding_layers"]
    if not isinstance(layers, (list, tuple)) or not all(_is_int(i) for i in layers):
        return f"field 'grounding_layers' must be a list of integers, got {_json_type(layers)}"
    for key in ("mean", "std"):
        triple = values[key]
        if (not isinstance(triple, (list, tuple)) or len(triple) != 3
                or not all(_is_finite_number(v) for v in triple)):
            return f"field {key!r} must be a list of 3 finite numbers (R, G, B), got {_json_type(triple)}"
    if not all(v > 0 for v in values["std"]):
        return f"field 'std' must be positive (inputs are divided by it), got {list(values['std'])}"
    grid = math.isqrt(values["num_grounding_tokens"])
    embed_dim, heads, stride = values["embed_dim"], values["num_heads"], values["patch_stride"]
    checks = [
        (embed_dim % heads == 0, f"embed_dim ({embed_dim}) must be divisible by num_heads ({heads})"),
        (embed_dim % 8 == 0, f"embed_dim ({embed_dim}) must be a multiple of 8 (the box encoding splits it in 8)"),
        (int(embed_dim * ratio) >= 1, f"mlp_ratio ({ratio}) leaves no hidden units at embed_dim {embed_dim}"),
        (values["query_dim"] % values["query_heads"] == 0,
         f"query_dim ({values['query_dim']}) must be divisible by query_heads ({values['query_heads']})"),
        (grid * grid == values["num_grounding_tokens"],
         f"num_grounding_tokens ({values['num_grounding_tokens']}) must be a perfect square (a grid of reference boxes)"),
        (stride & (stride - 1) == 0, f"patch_stride ({stride}) must be a power of 2"),
        (values["image_size"] % stride == 0,
         f"image_size ({values['image_size']}) must be a multiple of patch_stride ({stride})"),
        (values["num_grounding_tokens"] * (values["image_size"] // stride) ** 2 <= MAX_PRIOR_ELEMENTS,
         (f"num_grounding_tokens x (image_size / patch_stride)^2 exceeds {MAX_PRIOR_ELEMENTS} "
          "(the token-to-patch prior would not fit in memory)")),
        (len(layers) >= 1, "at least one grounding layer is needed (grounding_layers is empty)"),
        (all(1 <= i <= values["depth"] for i in layers),
         f"grounding_layers {list(layers)} must lie in 1..depth ({values['depth']})"),
        (list(layers) == sorted(set(layers)), f"grounding_layers {list(layers)} must be increasing"),
    ]
    return next((message for ok, message in checks if not ok), None)


@dataclass(frozen=True)
class VGGTConfig:
    """Architecture of the image model and the query encoder.

    Args:
        name: registry name, e.g. ``vggt_small``.
        image_size: square input side in pixels.
        patch_stride: total stride of the convolutional patch embedding (power of 2).
        embed_dim / depth / num_heads / mlp_ratio / qk_norm: the ViT backbone.
        num_grounding_tokens: N, a perfect square; reference boxes sit on a
            sqrt(N) x sqrt(N) grid.
        grounding_layers: 1-based backbone block indices after which a two-way
            grounding cross-attention layer runs.
        ground_dim: width of the joint region/query embedding space.
        query_dim / query_depth / query_heads / max_query_len: the text encoder.
        num_classes: image-level classes (and category queries) of the data.
        vocab_size: tokenizer vocabulary size (set from the saved vocabulary).
    """

    name: str
    image_size: int = 128
    patch_stride: int = 16
    embed_dim: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    num_grounding_tokens: int = 16
    grounding_layers: tuple[int, ...] = (2, 4, 6)
    ground_dim: int = 256
    query_dim: int = 128
    query_depth: int = 2
    query_heads: int = 2
    max_query_len: int = 12
    num_classes: int = 18
    vocab_size: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        problem = config_problem({f.name: getattr(self, f.name) for f in fields(self)})
        if problem:
            raise UserError(f"config {self.name}: {problem}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_stride

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.image_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> VGGTConfig:
        """A config from its JSON form; every wrong field is a UserError naming `source` and the field."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: 'config' must be a JSON object of config fields, got {_json_type(data)}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known), key=str)
        if unknown:
            hints = [f"{u!r} -> did you mean {close[0]!r}?" for u in unknown
                     if (close := difflib.get_close_matches(str(u), known, n=1, cutoff=0.6))]
            raise UserError(f"{source}: unknown config field(s) {unknown}"
                            + (f" ({'; '.join(hints)})" if hints else f"; known fields: {', '.join(known)}"))
        if "name" not in data:
            raise UserError(f"{source}: missing required field 'name'")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        defaults = {f.name: f.default for f in fields(cls) if f.name != "name"}
        problem = config_problem({**defaults, **values})
        if problem:
            raise UserError(f"{source}: config {problem}")
        return cls(**values)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the config (first 16 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_REGISTRY: dict[str, Callable[..., VGGTConfig]] = {}


def register_model(fn: Callable[..., VGGTConfig]) -> Callable[..., VGGTConfig]:
    """Register a named config function under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str, **overrides) -> VGGTConfig:
    """The registered config `name`, with field overrides (ablations change N, layers...)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model name {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)


@register_model
def vggt_tiny(**overrides) -> VGGTConfig:
    """A 2-block model on 32x32 input for tests (milliseconds per step)."""
    base = {"name": "vggt_tiny", "image_size": 32, "patch_stride": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "num_grounding_tokens": 4, "grounding_layers": (1, 2), "ground_dim": 32, "query_dim": 32,
            "query_depth": 1, "query_heads": 2}
    return VGGTConfig(**{**base, **overrides})


@register_model
def vggt_small(**overrides) -> VGGTConfig:
    """The shipped default: 6 blocks, width 256, head dim 64, 16 grounding tokens."""
    return VGGTConfig(**{"name": "vggt_small", **overrides})


@register_model
def vggt_ablation(**overrides) -> VGGTConfig:
    """A 4-block, width-96 model on 64x64 input for ablations that train many short runs (bench/ablations/)."""
    base = {"name": "vggt_ablation", "image_size": 64, "patch_stride": 8, "embed_dim": 96, "depth": 4,
            "num_heads": 4, "grounding_layers": (2, 4), "ground_dim": 96, "query_dim": 64}
    return VGGTConfig(**{**base, **overrides})
