"""Single-image grounding: image + text queries -> boxes, scores, an annotated picture.

Uses the same preprocessing and postprocessing as evaluation; the backend is
any `Runner` (PyTorch model folder or ONNX file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.data.preprocess import preprocess
from vggt_deploy.fileio import atomic_write_bytes, atomic_write_text
from vggt_deploy.model.io import LoadedModel
from vggt_deploy.model.postprocess import best_box
from vggt_deploy.outputs import OutputFolder


@dataclass
class Grounding:
    """The best box for one query: pixel (x, y, w, h) and sigmoid score."""

    query: str
    box: list[float]
    score: float


def ground(runner: Runner, loaded: LoadedModel, image: np.ndarray, queries: list[str]) -> list[Grounding]:
    """Top-1 box per query on one BGR image."""
    from vggt_deploy.model.queries import query_embeddings

    h, w = image.shape[:2]
    feeds = {"images": preprocess(image, loaded.model.cfg.preprocess)[None],
             "query_embeds": query_embeddings(loaded, queries)}
    out = runner.infer(feeds)
    results = []
    for q, text in enumerate(queries):
        box, score = best_box(out["boxes"][0], out["logits"][0], q, w, h)
        results.append(Grounding(text, [round(float(v), 2) for v in box], round(score, 4)))
    return results


_PALETTE = [(0, 200, 255), (255, 120, 0), (60, 220, 60), (255, 0, 200), (0, 80, 255), (200, 200, 0)]


def draw(image: np.ndarray, results: list[Grounding]) -> np.ndarray:
    """The image with each query's box and a caption (query, score)."""
    canvas = image.copy()
    for i, r in enumerate(results):
        x, y, w, h = (int(round(v)) for v in r.box)
        colour = _PALETTE[i % len(_PALETTE)]
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, 2)
        label = f"{r.query} {r.score:.2f}"
        cv2.putText(canvas, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


def output_names(stem: str) -> tuple[str, str]:
    """The files `write_outputs` writes for an image named <stem>.*: boxes as JSON and the annotated PNG."""
    return f"{stem}.json", f"{stem}.png"


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, results: list[Grounding]) -> tuple[Path, Path]:
    """<stem>.json and <stem>.png in out_dir, moved in together (other files there are left alone)."""
    out_dir = Path(out_dir)
    json_name, png_name = output_names(stem)
    _, buf = cv2.imencode(".png", draw(image, results))
    with OutputFolder(out_dir) as tmp:
        atomic_write_text(tmp / json_name, json.dumps([asdict(r) for r in results], indent=1) + "\n")
        atomic_write_bytes(tmp / png_name, buf.tobytes())
    return out_dir / json_name, out_dir / png_name
