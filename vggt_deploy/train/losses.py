"""The seed's blended loss: L = L_cls + lambda_loc * L_loc + lambda_ground * L_ground.

- L_cls: sigmoid focal loss of every (token, category query) pair, the
  image-level classification cross-entropy, and an auxiliary per-patch
  classification (the category of the object covering each patch centre, or
  background), which gives the backbone dense supervision from step one.
- L_loc: L1 + GIoU on Hungarian-matched tokens.
- L_ground: contrastive alignment of referring-expression embeddings with the
  region embeddings of an image's tokens (cross-entropy towards the token
  matched to the referred object).

Per-token terms are applied after every grounding layer (auxiliary losses),
which is what makes set prediction converge in a CPU-sized budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vggt_deploy.boxes import cxcywh_to_xyxy, generalized_box_iou
from vggt_deploy.model.vggt import VGGT, Features, LayerOutputs
from vggt_deploy.train import CLS_LOSSES  # noqa: F401  (re-exported: the choices of LossWeights.cls_loss)
from vggt_deploy.train.matcher import hungarian_match


@dataclass(frozen=True)
class LossWeights:
    """Weights of the blended loss; the lambdas are the seed's."""

    lambda_loc: float = 1.0
    lambda_ground: float = 1.0
    cls_loss: str = "focal"  # one of CLS_LOSSES
    w_focal: float = 2.0
    w_image: float = 0.5
    w_dense: float = 1.0
    w_l1: float = 5.0
    w_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class Batch:
    """A training batch; targets are per image, refs index into the batch."""

    images: torch.Tensor  # (B, 3, H, W)
    gt_boxes: list[torch.Tensor]  # B x (K, 4) normalised cx, cy, w, h
    gt_labels: list[torch.Tensor]  # B x (K,) 0-based category index
    image_labels: torch.Tensor  # (B,) 0-based, -1 when unknown
    ref_image: torch.Tensor  # (R,) batch index of each referring expression
    ref_object: torch.Tensor  # (R,) object index within its image
    ref_queries: torch.Tensor  # (R, D) embeddings of the expressions


def sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


def _layer_loss(
    model: VGGT, out: LayerOutputs, cat_queries: torch.Tensor, batch: Batch, w: LossWeights, num_boxes: float
) -> dict[str, torch.Tensor]:
    ground = model.heads["ground"]
    logits = ground.logits(out.regions.float(), cat_queries)  # (B, N, C)
    boxes = out.boxes.float()
    b, n, c = logits.shape
    targets = torch.zeros_like(logits)
    pred_boxes, tgt_boxes = [], []
    max_objects = max(1, max(len(t) for t in batch.gt_labels))
    matched = torch.full((b, max_objects), -1, dtype=torch.long)  # object index -> token index
    for i in range(b):
        rows, cols = hungarian_match(boxes[i], logits[i], batch.gt_boxes[i], batch.gt_labels[i],
                                     alpha=w.focal_alpha, gamma=w.focal_gamma)
        targets[i, rows, batch.gt_labels[i][cols]] = 1.0
        pred_boxes.append(boxes[i, rows])
        tgt_boxes.append(batch.gt_boxes[i][cols])
        matched[i, cols] = torch.as_tensor(rows)
    if w.cls_loss == "focal":
        cls = sigmoid_focal(logits, targets, w.focal_alpha, w.focal_gamma).sum() / num_boxes
    else:  # softmax over categories + a "no object" column from the bias-only logit
        no_obj = (targets.sum(-1, keepdim=True) == 0).float()
        full = torch.cat([logits, torch.zeros_like(logits[..., :1])], dim=-1)
        cls = -(F.log_softmax(full, -1) * torch.cat([targets, no_obj], -1)).sum() / (b * n)
    pred, tgt = torch.cat(pred_boxes), torch.cat(tgt_boxes)
    l1 = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
    giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt)))).sum() / num_boxes
    terms = {"focal": cls, "l1": l1, "giou": giou}
    if batch.ref_image.numel():
        ref_logits = ground.logits(out.regions.float()[batch.ref_image], batch.ref_queries)  # (R, N, R)
        r = torch.arange(batch.ref_image.numel())
        per_token = ref_logits[r, :, r]  # (R, N): each expression against its own image's tokens
        target_token = matched[batch.ref_image, batch.ref_object]
        ok = target_token >= 0
        terms["ground"] = F.cross_entropy(per_token[ok], target_token[ok]) if ok.any() else per_token.sum() * 0
    else:
        terms["ground"] = boxes.sum() * 0
    return terms


def dense_targets(patch_boxes: torch.Tensor, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], background: int) -> torch.Tensor:
    """(B, T) category of the topmost object whose box holds each patch centre, else `background`.

    Objects are listed in drawing order, so the last one containing a point is on top.
    """
    centres = patch_boxes[:, :2]  # (T, 2)
    out = torch.full((len(gt_boxes), centres.shape[0]), background, dtype=torch.long)
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        for box, label in zip(boxes, labels):
            inside = ((centres - box[:2]).abs() <= box[2:] / 2).all(-1)
            out[i, inside] = label
    return out


def blended_loss(
    model: VGGT, feats: Features, cat_queries: torch.Tensor, batch: Batch, w: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (per-token terms summed over grounding layers) for logging."""
    num_boxes = max(1.0, float(sum(len(t) for t in batch.gt_labels)))
    parts = {"focal": 0.0, "l1": 0.0, "giou": 0.0, "ground": 0.0}
    for out in feats.layers:
        for k, v in _layer_loss(model, out, cat_queries, batch, w, num_boxes).items():
            parts[k] = parts[k] + v
    class_logits = feats.class_logits.float()
    known = batch.image_labels >= 0
    image_ce = F.cross_entropy(class_logits[known], batch.image_labels[known]) if known.any() else class_logits.sum() * 0
    dense_ce = class_logits.sum() * 0
    if feats.dense_logits is not None:
        dense = feats.dense_logits.float()
        targets = dense_targets(model.patch_boxes, batch.gt_boxes, batch.gt_labels, dense.shape[-1] - 1)
        dense_ce = F.cross_entropy(dense.reshape(-1, dense.shape[-1]), targets.reshape(-1))
    l_cls = w.w_focal * parts["focal"] + w.w_image * image_ce + w.w_dense * dense_ce
    l_loc = w.w_l1 * parts["l1"] + w.w_giou * parts["giou"]
    total = l_cls + w.lambda_loc * l_loc + w.lambda_ground * parts["ground"]
    extra = {"image_ce": image_ce, "dense_ce": dense_ce, "total": total}
    logged = {k: float(v.detach()) for k, v in (parts | extra).items()}
    return total, logged
