"""Prediction heads on grounding tokens and on the image.

Boxes are offsets from each token's reference box (the geometry prior), so an
untrained token already predicts its own reference box; grounding logits are
scaled cosine similarities between region and query embeddings plus a bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BoxHead(nn.Module):
    """Token (B, N, C) + reference boxes (N, 4) -> boxes (B, N, 4) as normalised cx, cy, w, h."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        d = self.mlp(tokens)
        centre = ref[:, :2] + d[..., :2] * ref[:, 2:]  # shift in units of the reference size
        size = ref[:, 2:] * torch.exp(d[..., 2:].clamp(-4.0, 4.0))
        return torch.cat([centre, size], dim=-1)


class GroundingHead(nn.Module):
    """Region embeddings and their similarity to query embeddings."""

    def __init__(self, dim: int, ground_dim: int, prior_prob: float = 0.02) -> None:
        super().__init__()
        self.region = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, ground_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # Focal-loss prior: most (token, query) pairs are negatives at the start.
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def regions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm region embeddings (B, N, D)."""
        return F.normalize(self.region(tokens), dim=-1)

    def logits(self, regions: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        """regions (B, N, D) x queries (Q, D) -> logits (B, N, Q)."""
        queries = F.normalize(query_embeds, dim=-1)
        return self.logit_scale.exp().clamp(max=100.0) * (regions @ queries.t()) + self.bias

    def forward(self, regions: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        """Same as `logits`; called as a module so exported nodes carry the `heads.ground` path."""
        return self.logits(regions, query_embeds)


class ClassHead(nn.Module):
    """Image-level classification from pooled image and grounding tokens."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.fc = nn.Linear(2 * dim, num_classes)

    def forward(self, image_tokens: torch.Tensor, grounding_tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([image_tokens.mean(1), grounding_tokens.mean(1)], dim=-1)
        return self.fc(self.norm(pooled))
