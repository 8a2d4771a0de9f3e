"""Architecture knobs of the VGGT-1B port and the registry of named configs.

Every default equals the corresponding default of the reference constructors
(``VGGT.__init__``, ``Aggregator.__init__``, ``CameraHead.__init__``,
``DPTHead.__init__`` and the DINOv2 ``vit_large`` preset in facebookresearch/vggt),
so ``VGGT1BConfig()`` describes the architecture of the public ``facebook/VGGT-1B``
checkpoint. The DINOv2 geometry (depth, heads) is spelled out as fields so that a
tiny test config can shrink it; the width of the DINO trunk is always ``embed_dim``
because its patch tokens are concatenated with the aggregator's own tokens.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from vggt_deploy.errors import UserError

# Reference presets of the DINOv2-with-registers trunk: name -> (width, depth, heads).
# The aggregator builds exactly these when asked for the name (vision_transformer.py).
DINO_PRESETS: dict[str, tuple[int, int, int]] = {
    "dinov2_vits14_reg": (384, 12, 6),
    "dinov2_vitb14_reg": (768, 12, 12),
    "dinov2_vitl14_reg": (1024, 24, 16),
    "dinov2_vitg2_reg": (1536, 40, 24),
}


@dataclass(frozen=True)
class VGGT1BConfig:
    """All sizes of one VGGT model; the defaults are the public VGGT-1B.

    Aggregator (``Aggregator`` in the reference):
        img_size: image side the DINO position embedding is trained for (518 -> a 37x37 grid).
        patch_size: pixels per patch side; input H and W must be multiples of it.
        embed_dim: token width C; the heads see 2C (frame and global outputs concatenated).
        depth: number of frame blocks, and also of global blocks (24 + 24 for VGGT-1B).
        num_heads, mlp_ratio: of every aggregator block.
        num_register_tokens: register tokens per frame, both in DINO and in the aggregator.
        patch_embed: ``"dinov2_vitl14_reg"`` (or another DINO preset name) for the DINOv2 trunk,
            any name containing ``"conv"`` for a single strided convolution.
        aa_order, aa_block_size: alternating attention: which attention type runs first, and how
            many blocks of one type run before switching.
        qk_norm: LayerNorm over each head's queries and keys in the aggregator blocks.
        rope_freq: 2D RoPE base frequency; <= 0 disables RoPE.
        init_values: LayerScale init of the aggregator blocks (present in the state dict when > 0).
    DINO trunk (``DinoVisionTransformer``): dino_depth / dino_num_heads default to the preset
        named by ``patch_embed``; dino_mlp_ratio, dino_init_values (LayerScale, 1.0 in the
        reference), dino_interpolate_antialias / dino_interpolate_offset (position-embedding
        resize; the reference passes True and 0.0).
    Camera head (``CameraHead``): camera_trunk_depth, camera_num_heads, camera_mlp_ratio,
        camera_init_values, camera_iterations (refinement steps), pose_encoding and the three
        pose activations (translation, quaternion, field of view).
    DPT heads (``DPTHead``, shared by the depth and the point head): dpt_features,
        dpt_out_channels (one per tapped layer), dpt_layers (indices into the aggregator outputs),
        dpt_pos_embed, dpt_frames_chunk_size (frames per DPT pass; None = all at once. The reference
        default is 8; results do not depend on it, only peak memory does. Leave it None for an export
        with a dynamic frame count: the chunk loop needs a concrete S).
    """

    name: str = "vggt_1b"
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed: str = "dinov2_vitl14_reg"
    aa_order: tuple[str, ...] = ("frame", "global")
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    dino_depth: int | None = None
    dino_num_heads: int | None = None
    dino_mlp_ratio: float = 4.0
    dino_init_values: float = 1.0
    dino_interpolate_antialias: bool = True
    dino_interpolate_offset: float = 0.0
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_mlp_ratio: float = 4.0
    camera_init_values: float = 0.01
    camera_iterations: int = 4
    pose_encoding: str = "absT_quaR_FoV"
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_pos_embed: bool = True
    dpt_frames_chunk_size: int | None = None

    def __post_init__(self) -> None:
        for key in ("aa_order", "dpt_out_channels", "dpt_layers"):  # lists from JSON/YAML -> hashable tuples
            object.__setattr__(self, key, tuple(getattr(self, key)))
        problem = _problem(self)
        if problem:
            raise UserError(f"config {self.name!r}: {problem}")

    @property
    def uses_dino(self) -> bool:
        """True when the patch embedding is the DINOv2 trunk (the reference tests ``"conv" in name``)."""
        return "conv" not in self.patch_embed

    @property
    def dino_geometry(self) -> tuple[int, int]:
        """(depth, heads) of the DINO trunk: the explicit fields, else the preset's numbers."""
        _, depth, heads = DINO_PRESETS.get(self.patch_embed, (0, 0, 0))
        return (self.dino_depth if self.dino_depth is not None else depth,
                self.dino_num_heads if self.dino_num_heads is not None else heads)

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in every frame: one camera token, then the registers."""
        return 1 + self.num_register_tokens


def _problem(cfg: VGGT1BConfig) -> str | None:
    """The first inconsistency of a config, or None."""
    if cfg.embed_dim % cfg.num_heads or (cfg.embed_dim // cfg.num_heads) % 4:
        return "embed_dim / num_heads must be a multiple of 4 (2D RoPE splits each head in four)"
    if sorted(cfg.aa_order) != ["frame", "global"]:
        return f"aa_order must hold 'frame' and 'global' once each, got {list(cfg.aa_order)}"
    if cfg.aa_block_size < 1 or cfg.depth % cfg.aa_block_size:
        return f"depth ({cfg.depth}) must be divisible by aa_block_size ({cfg.aa_block_size})"
    if any(not -cfg.depth <= i < cfg.depth for i in cfg.dpt_layers) or len(cfg.dpt_layers) != 4:
        return f"dpt_layers must be 4 layer indices below depth {cfg.depth}, got {list(cfg.dpt_layers)}"
    if len(cfg.dpt_out_channels) != 4:
        return "dpt_out_channels must hold 4 channel counts"
    if (2 * cfg.embed_dim) % cfg.camera_num_heads:
        return "2 * embed_dim must be divisible by camera_num_heads"
    if cfg.pose_encoding != "absT_quaR_FoV":
        return f"unsupported pose_encoding {cfg.pose_encoding!r} (the reference knows only 'absT_quaR_FoV')"
    if cfg.uses_dino:
        if cfg.patch_embed not in DINO_PRESETS:
            return f"unknown patch_embed {cfg.patch_embed!r}; use one of {sorted(DINO_PRESETS)} or 'conv'"
        width = DINO_PRESETS[cfg.patch_embed][0]
        if cfg.dino_depth is None and width != cfg.embed_dim:
            return f"{cfg.patch_embed} is {width} wide but embed_dim is {cfg.embed_dim}"
        depth, heads = cfg.dino_geometry
        if depth < 1 or heads < 1 or cfg.embed_dim % heads:
            return "dino_depth must be >= 1 and dino_num_heads must divide embed_dim"
        if cfg.img_size % cfg.patch_size:
            return "img_size must be a multiple of patch_size (the DINO position grid is square)"
    return None


_CONFIGS: dict[str, VGGT1BConfig] = {
    "vggt_1b": VGGT1BConfig(),
    # Everything tiny: 2 frame + 2 global blocks of width 64 over a 4x4 patch grid, a 2-block DINO
    # trunk, narrow DPT heads. For tests; not a trained model.
    "vggt_1b_tiny": VGGT1BConfig(
        name="vggt_1b_tiny", img_size=56, embed_dim=64, depth=2, num_heads=4,
        dino_depth=2, dino_num_heads=4, camera_trunk_depth=1, camera_num_heads=4,
        dpt_features=16, dpt_out_channels=(8, 16, 32, 32), dpt_layers=(0, 0, 1, 1),
    ),
}


def list_vggt1b_configs() -> list[str]:
    """Names accepted by `get_vggt1b_config`."""
    return sorted(_CONFIGS)


def get_vggt1b_config(name: str, **overrides) -> VGGT1BConfig:
    """The named config, with `overrides` replacing fields (validated again)."""
    if name not in _CONFIGS:
        close = difflib.get_close_matches(name, _CONFIGS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown VGGT-1B config {name!r}{hint}; known: {', '.join(list_vggt1b_configs())}")
    unknown = sorted(set(overrides) - set(VGGT1BConfig.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown VGGT1BConfig field(s): {', '.join(unknown)}")
    return replace(_CONFIGS[name], **overrides) if overrides else _CONFIGS[name]
