"""Grounding maps: where each answering grounding token looked, as heatmaps over the image.

For every query the token with the highest score answers it; its
token-to-image cross-attention at the last grounding layer (averaged over
heads) is upsampled to the image and overlaid, with the token's reference box
(its geometric prior, dashed) and predicted box. These are the seed's
interpretability figures.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from vggt_deploy.boxes import cxcywh_to_xywh
from vggt_deploy.data.preprocess import preprocess
from vggt_deploy.fileio import atomic_write_bytes
from vggt_deploy.model.io import LoadedModel
from vggt_deploy.model.queries import query_embeddings


@torch.no_grad()
def grounding_maps(loaded: LoadedModel, image: np.ndarray, queries: list[str]) -> list[dict]:
    """Per query: answering token, score, attention map (grid x grid), predicted and reference boxes."""
    model = loaded.model.eval()
    layer = model.grounding[-1].token_to_image
    layer.keep_attention = True
    try:
        x = torch.from_numpy(preprocess(image, model.cfg.preprocess)[None])
        q = torch.from_numpy(query_embeddings(loaded, queries))
        boxes, logits, _ = model(x, q)
        attention = layer.last_attention[0].mean(0)  # (N, T)
    finally:
        layer.keep_attention = False
    grid = model.cfg.grid_size
    h, w = image.shape[:2]
    out = []
    for k, text in enumerate(queries):
        token = int(logits[0, :, k].argmax())
        out.append({
            "query": text, "token": token, "score": float(torch.sigmoid(logits[0, token, k])),
            "map": attention[token].reshape(grid, grid).numpy(),
            "box": cxcywh_to_xywh(boxes[0, token].numpy(), w, h)[0],
            "reference": cxcywh_to_xywh(model.ref_boxes[token].numpy(), w, h)[0],
        })
    return out


def render(image: np.ndarray, item: dict) -> np.ndarray:
    """One panel: heatmap overlay, reference box (dashed grey), predicted box, caption."""
    h, w = image.shape[:2]
    heat = cv2.resize(item["map"] / max(item["map"].max(), 1e-9), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    panel = cv2.addWeighted(image, 0.55, colour, 0.45, 0)
    rx, ry, rw, rh = (int(v) for v in item["reference"])
    for i in range(0, 2 * (rw + rh), 8):  # dashed outline of the reference box
        t = i % (2 * (rw + rh))
        pts = [(rx + t, ry)] if t < rw else [(rx + rw, ry + t - rw)] if t < rw + rh else \
              [(rx + rw - (t - rw - rh), ry + rh)] if t < 2 * rw + rh else [(rx, ry + rh - (t - 2 * rw - rh))]
        cv2.circle(panel, pts[0], 1, (200, 200, 200), -1)
    x, y, bw, bh = (int(v) for v in item["box"])
    cv2.rectangle(panel, (x, y), (x + bw, y + bh), (255, 255, 255), 2)
    caption = np.zeros((36, w, 3), np.uint8)
    cv2.putText(caption, f"{item['query']}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(caption, f"token {item['token']}  score {item['score']:.2f}", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (180, 180, 180), 1, cv2.LINE_AA)
    return np.concatenate([panel, caption], axis=0)


def write_maps(image: np.ndarray, items: list[dict], path: Path) -> Path:
    """All panels side by side in one PNG (written atomically)."""
    sheet = np.concatenate([render(image, item) for item in items], axis=1)
    _, buf = cv2.imencode(".png", sheet)
    return atomic_write_bytes(path, buf.tobytes())
