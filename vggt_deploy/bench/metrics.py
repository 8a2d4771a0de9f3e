"""Accuracy metrics: pycocotools mAP, referring-expression accuracy, top-k.

mAP is always computed by pycocotools' COCOeval itself (never re-implemented),
on a ground truth built from the evaluated records so a subset is scored
exactly as the full set would score those images.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vggt_deploy.data.coco import ImageRecord


def coco_ground_truth(records: list[ImageRecord], categories: list[tuple[int, str]]) -> dict:
    """A COCO ground-truth dict of `records` (what pycocotools' COCO() loads)."""
    images, anns = [], []
    for r in records:
        images.append({"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height})
        areas = r.areas if r.areas is not None else r.boxes[:, 2] * r.boxes[:, 3]
        for k in range(len(r.boxes)):
            anns.append({"id": int(r.ann_ids[k]), "image_id": r.image_id, "category_id": int(r.category_ids[k]),
                         "bbox": [float(v) for v in r.boxes[k]], "area": float(areas[k]), "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in categories]}


def coco_map(ground_truth: dict, detections: list[dict]) -> dict[str, float]:
    """COCOeval bbox metrics: map (@[.5:.95]), map50, map75, map_small/medium/large.

    An empty detection list scores 0 (pycocotools refuses to load it).
    """
    keys = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
    if not detections:
        return dict.fromkeys(keys, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(img["id"] for img in ground_truth["images"])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(keys, ev.stats[:6])}


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def topk_accuracy(class_logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of images whose label is among the k highest logits (labels < 0 are skipped)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    top = np.argsort(-class_logits[keep], axis=1)[:, :k]
    return float((top == labels[keep, None]).any(axis=1).mean())
