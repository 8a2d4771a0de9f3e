"""VGGT configuration and the registry of named configs.

A config fully determines the architecture and the preprocessing; its hash
(`config_hash`) travels with the weights and into exported files so later steps
can check what they were given.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError


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
        grid = math.isqrt(self.num_grounding_tokens)
        checks = [
            (self.embed_dim % self.num_heads == 0, "embed_dim must be divisible by num_heads"),
            (self.query_dim % self.query_heads == 0, "query_dim must be divisible by query_heads"),
            (grid * grid == self.num_grounding_tokens, "num_grounding_tokens must be a perfect square (a grid of reference boxes)"),
            (self.patch_stride >= 2 and self.patch_stride & (self.patch_stride - 1) == 0, "patch_stride must be a power of 2"),
            (self.image_size % self.patch_stride == 0, "image_size must be a multiple of patch_stride"),
            (all(1 <= i <= self.depth for i in self.grounding_layers), "grounding_layers must lie in 1..depth"),
            (len(self.grounding_layers) >= 1, "at least one grounding layer is needed"),
            (list(self.grounding_layers) == sorted(set(self.grounding_layers)), "grounding_layers must be increasing"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"config {self.name}: {message}")

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown config field(s) {unknown}")
        if "name" not in data:
            raise UserError(f"{source}: missing required field 'name'")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
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
    base = dict(name="vggt_tiny", image_size=32, patch_stride=8, embed_dim=32, depth=2, num_heads=2,
                num_grounding_tokens=4, grounding_layers=(1, 2), ground_dim=32, query_dim=32,
                query_depth=1, query_heads=2)
    return VGGTConfig(**{**base, **overrides})


@register_model
def vggt_small(**overrides) -> VGGTConfig:
    """The shipped default: 6 blocks, width 256, head dim 64, 16 grounding tokens."""
    return VGGTConfig(**{"name": "vggt_small", **overrides})


@register_model
def vggt_ablation(**overrides) -> VGGTConfig:
    """A 4-block, width-96 model on 64x64 input for ablations that train many short runs (bench/ablations/)."""
    base = dict(name="vggt_ablation", image_size=64, patch_stride=8, embed_dim=96, depth=4, num_heads=4,
                grounding_layers=(2, 4), ground_dim=96, query_dim=64)
    return VGGTConfig(**{**base, **overrides})
