"""Model outputs -> detections in the original image's pixels.

Every backend's raw outputs (boxes (N, 4) normalised cx, cy, w, h and logits
(N, Q)) go through these functions, so PyTorch, ONNX Runtime and TensorRT are
scored identically.
"""

from __future__ import annotations

import numpy as np

from vggt_deploy.boxes import cxcywh_to_xywh


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def detections(
    boxes: np.ndarray, logits: np.ndarray, width: int, height: int, max_dets: int = 100, min_score: float = 0.0
) -> list[tuple[np.ndarray, int, float]]:
    """Top-scoring (pixel xywh box, query index, score) triples of one image.

    A token may report several queries (one score each), as in sigmoid-based
    detectors; the COCO evaluation ranks them by score.
    """
    scores = sigmoid(logits.astype(np.float32))  # (N, Q)
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")[:max_dets]
    pixel = cxcywh_to_xywh(boxes, width, height)
    num_q = scores.shape[1]
    return [(pixel[i // num_q], int(i % num_q), float(flat[i])) for i in order if flat[i] >= min_score]


def best_box(boxes: np.ndarray, logits: np.ndarray, query: int, width: int, height: int) -> tuple[np.ndarray, float]:
    """The top-1 box for one query (a referring expression): pixel xywh and score."""
    token = int(np.argmax(logits[:, query]))
    return cxcywh_to_xywh(boxes[token], width, height)[0], float(sigmoid(logits[token, query]))
