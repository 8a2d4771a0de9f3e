"""Evaluate a grounding model on a COCO dataset with any backend.

The backend is a function ``infer(images, query_embeds) -> (boxes, logits,
class_logits)`` on numpy arrays, so the same evaluation scores PyTorch, ONNX
Runtime and TensorRT. Query embeddings come from the model's query encoder,
computed once per batch for the category names plus that batch's referring
expressions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from vggt_deploy.bench.metrics import box_iou_xywh, coco_ground_truth, coco_map, topk_accuracy
from vggt_deploy.data.coco import GroundingDataset
from vggt_deploy.data.preprocess import preprocess
from vggt_deploy.model.io import LoadedModel
from vggt_deploy.model.postprocess import best_box, detections
from vggt_deploy.model.queries import query_embeddings

InferFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def torch_infer(model: torch.nn.Module) -> InferFn:
    """The PyTorch model as an `InferFn` (float32, no grad)."""

    @torch.no_grad()
    def infer(images: np.ndarray, query_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = model(torch.from_numpy(images), torch.from_numpy(query_embeds))
        return tuple(t.numpy() for t in out)

    return infer


def runner_infer(runner) -> InferFn:
    """Any active `Runner` with the VGGT contract as an `InferFn`."""
    from vggt_deploy.model.vggt import OUTPUT_NAMES

    def infer(images: np.ndarray, query_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = runner.infer({"images": images.astype(np.float32), "query_embeds": query_embeds.astype(np.float32)})
        return tuple(out[name] for name in OUTPUT_NAMES)

    return infer


def evaluate(
    loaded: LoadedModel,
    dataset: GroundingDataset,
    infer: InferFn | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Score `dataset` (or its first `limit` images) and return the metrics dict.

    Keys: map, map50, map75, map_small, map_medium, map_large, refexp_acc,
    num_refs, top1, top5, num_images, detections (COCO result dicts).
    """
    records = dataset.records[:limit] if limit else dataset.records
    part = evaluate_part(loaded, dataset, records, infer, batch_size, progress)
    return merge_parts(dataset, records, [part])


def evaluate_part(loaded: LoadedModel, dataset: GroundingDataset, records: list, infer: InferFn | None = None,
                  batch_size: int = 16, progress: bool = True) -> dict:
    """What `records` contribute to the metrics: detections, referring hits, class logits and labels.

    Parts of consecutive record ranges, each starting on a multiple of `batch_size`, see exactly the
    batches one whole run sees (a batch's query set holds its own referring expressions), so
    `merge_parts` of them gives the whole run's metrics, bit for bit.
    """
    infer = infer or torch_infer(loaded.model)
    dataset.check_images(records)
    cat_ids = [cid for cid, _ in dataset.categories]
    cat_embeds = query_embeddings(loaded, dataset.category_names)
    pp = loaded.model.cfg.preprocess
    dets: list[dict] = []
    ref_hits: list[bool] = []
    class_logits, labels = [], []
    for start in tqdm(range(0, len(records), batch_size), desc="evaluating", unit="batch", disable=not progress):
        batch = records[start : start + batch_size]
        images = np.stack([preprocess(dataset.image(r), pp) for r in batch])
        sentences = [s for r in batch for s, _ in r.refs]
        queries = np.concatenate([cat_embeds, query_embeddings(loaded, sentences)]) if sentences else cat_embeds
        boxes, logits, cls = infer(images, queries)
        num_cats = q = len(cat_ids)  # q: column of the next referring expression
        for i, r in enumerate(batch):
            for box, query, score in detections(boxes[i], logits[i, :, :num_cats], r.width, r.height):
                dets.append({"image_id": r.image_id, "category_id": cat_ids[query],
                             "bbox": [round(float(v), 3) for v in box], "score": round(score, 6)})
            for s, k in r.refs:
                box, _ = best_box(boxes[i], logits[i], q, r.width, r.height)
                ref_hits.append(bool(box_iou_xywh(box, r.boxes[k]) >= 0.5))
                q += 1
            labels.append(cat_ids.index(r.label) if r.label in cat_ids else -1)
        class_logits.append(cls)
    logits = np.concatenate(class_logits) if class_logits else np.zeros((0, 1), np.float32)
    return {"detections": dets, "ref_hits": ref_hits, "class_logits": logits, "labels": labels}


def merge_parts(dataset: GroundingDataset, records: list, parts: list[dict]) -> dict:
    """The metrics of `records` from the `evaluate_part` results of its consecutive ranges, in order:
    one pycocotools evaluation over every detection."""
    dets = [d for p in parts for d in p["detections"]]
    ref_hits = [h for p in parts for h in p["ref_hits"]]
    logits = [np.asarray(p["class_logits"], np.float32) for p in parts if len(p["class_logits"])]
    all_logits = np.concatenate(logits) if logits else np.zeros((0, 1))
    label_arr = np.array([l for p in parts for l in p["labels"]], dtype=np.int64)
    metrics = coco_map(coco_ground_truth(records, dataset.categories), dets)
    metrics.update(
        refexp_acc=float(np.mean(ref_hits)) if ref_hits else float("nan"),
        num_refs=len(ref_hits),
        top1=topk_accuracy(all_logits, label_arr, 1),
        top5=topk_accuracy(all_logits, label_arr, 5),
        num_images=len(records),
        detections=dets,
    )
    return metrics
