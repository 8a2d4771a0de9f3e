"""Query embeddings: texts through the model's own tokenizer and query encoder.

The image graph takes `query_embeds` [Q, D] as an input, computed once per query
set; export, evaluation, inference and the benchmark all compute them here.
"""

from __future__ import annotations

import numpy as np
import torch

from vggt_deploy.model.io import LoadedModel


@torch.no_grad()
def query_embeddings(loaded: LoadedModel, texts: list[str]) -> np.ndarray:
    """Embed texts with the model's own tokenizer and query encoder -> (Q, D) float32."""
    ids = loaded.tokenizer.encode(texts, loaded.model.cfg.max_query_len)
    return loaded.model.encode_queries(ids).numpy().astype(np.float32)
