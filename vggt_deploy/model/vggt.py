"""VGGT: a ViT whose image tokens and geometry-grounding tokens talk at chosen layers.

Module paths are the names users write in quantization plans:
``patch_embed``, ``pos_embed``, ``blocks.<i>.attn.q``, ``grounding.<k>.token_to_image``,
``heads.box``, ``heads.ground``, ``heads.cls``, and ``query_encoder`` (exported
separately: the image graph takes its output as an input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vggt_deploy.model.config import VGGTConfig
from vggt_deploy.model.grounding import BoxEncoding, GroundingLayer, grid_boxes, spatial_prior
from vggt_deploy.model.heads import BoxHead, ClassHead, GroundingHead
from vggt_deploy.model.layers import Block, PatchEmbed
from vggt_deploy.model.query_encoder import QueryEncoder

OUTPUT_NAMES: tuple[str, ...] = ("boxes", "logits", "class_logits")


class TokenPool(nn.Module):
    """Fixed Gaussian pooling of patch features around each reference box.

    Each grounding token starts from what lies at its prior location, so it
    knows where to look from the first grounding layer on.
    """

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)  # (N, T), rows sum to 1

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.weights @ patches  # (B, N, C)


@dataclass
class Features:
    """Everything training needs from one forward pass."""

    layers: list[LayerOutputs]  # one per grounding layer, last = final prediction
    class_logits: torch.Tensor  # (B, num_classes)
    dense_logits: torch.Tensor | None  # (B, T, num_classes + 1) per-patch classes, training only


@dataclass
class LayerOutputs:
    """Predictions after one grounding layer (used for auxiliary losses)."""

    boxes: torch.Tensor  # (B, N, 4) normalised cx, cy, w, h
    regions: torch.Tensor  # (B, N, D) unit-norm region embeddings


class VGGT(nn.Module):
    """The image model plus its query encoder.

    Args:
        cfg: architecture; see `VGGTConfig`.
    """

    def __init__(self, cfg: VGGTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_stride, dim)
        self.pos_embed = BoxEncoding(dim)
        grid = int(cfg.num_grounding_tokens**0.5)
        self.register_buffer("patch_boxes", grid_boxes(cfg.grid_size), persistent=False)
        self.register_buffer("ref_boxes", grid_boxes(grid), persistent=False)
        prior = spatial_prior(self.ref_boxes, self.patch_boxes)  # (N, T)
        self.register_buffer("spatial_prior", prior, persistent=False)
        self.token_pool = TokenPool(prior.softmax(dim=-1))
        self.grounding_tokens = nn.Parameter(torch.zeros(cfg.num_grounding_tokens, dim))
        nn.init.trunc_normal_(self.grounding_tokens, std=0.02)
        self.token_init = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth)]
        )
        self.grounding = nn.ModuleList(
            [GroundingLayer(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in cfg.grounding_layers]
        )
        self.norm = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict(
            {
                "box": BoxHead(dim),
                "ground": GroundingHead(dim, cfg.ground_dim),
                "cls": ClassHead(dim, cfg.num_classes),
                "dense": nn.Linear(dim, cfg.num_classes + 1),  # auxiliary, training only
            }
        )
        self.query_encoder = QueryEncoder(
            cfg.vocab_size, cfg.query_dim, cfg.query_depth, cfg.query_heads, cfg.max_query_len, cfg.ground_dim
        )
        self.apply(_init_weights)

    def encode_queries(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (Q, L) -> query embeddings (Q, ground_dim)."""
        return self.query_encoder(token_ids)

    def forward_features(self, images: torch.Tensor) -> Features:
        """Images (B, 3, H, W) -> per-grounding-layer outputs, class logits (and dense logits when training)."""
        x_pos = self.pos_embed(self.patch_boxes)[None]  # (1, T, C)
        g_pos = self.pos_embed(self.ref_boxes)[None]  # (1, N, C)
        patches = self.patch_embed(images)  # (B, T, C)
        x = patches + x_pos
        g = self.grounding_tokens[None] + g_pos + self.token_init(self.token_pool(patches))  # (B, N, C)
        layers = list(self.cfg.grounding_layers)
        outputs: list[LayerOutputs] = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in layers:
                g, x = self.grounding[layers.index(i)](g, x, g_pos, x_pos, self.spatial_prior)
                if self.training or i == layers[-1]:  # auxiliary predictions only feed training losses
                    t = self.norm_tokens(g)
                    outputs.append(LayerOutputs(self.heads["box"](t, self.ref_boxes), self.heads["ground"].regions(t)))
        x = self.norm(x)
        class_logits = self.heads["cls"](x, self.norm_tokens(g))
        dense = self.heads["dense"](x) if self.training else None
        return Features(outputs, class_logits, dense)

    def forward(self, images: torch.Tensor, query_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The export contract.

        Args:
            images: (B, 3, H, W) float32, already normalised by `preprocess`.
            query_embeds: (Q, ground_dim) float32 from `encode_queries`.

        Returns:
            boxes: (B, N, 4) normalised (cx, cy, w, h), one per grounding token.
            logits: (B, N, Q) grounding logits (sigmoid gives a score per token and query).
            class_logits: (B, num_classes) image-level classification.
        """
        feats = self.forward_features(images)
        last = feats.layers[-1]
        return last.boxes, self.heads["ground"](last.regions, query_embeds), feats.class_logits


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def create_model(cfg: VGGTConfig) -> VGGT:
    """Build a randomly initialised VGGT from a config (weights: see `model.io`)."""
    model = VGGT(cfg)
    # BoxHead zero-inits its last layer so untrained tokens predict their reference box;
    # `_init_weights` must not undo that.
    for head_layer in (model.heads["box"].mlp[-1],):
        nn.init.zeros_(head_layer.weight)
        nn.init.zeros_(head_layer.bias)
    return model
