"""Hungarian matching of grounding tokens to ground-truth objects (scipy)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vggt_deploy.boxes import cxcywh_to_xyxy, generalized_box_iou


@torch.no_grad()
def hungarian_match(
    boxes: torch.Tensor,
    logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    w_class: float = 2.0,
    w_l1: float = 5.0,
    w_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Match one image's N tokens to its K objects.

    Args:
        boxes: (N, 4) predicted cx, cy, w, h.
        logits: (N, C) class logits against the category queries.
        gt_boxes: (K, 4) target cx, cy, w, h.
        gt_labels: (K,) 0-based category indices.

    Returns:
        (token indices, object indices), each of length min(N, K).
    """
    if gt_boxes.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    prob = logits.float().sigmoid()[:, gt_labels]  # (N, K)
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    cost_class = pos - neg
    cost_l1 = torch.cdist(boxes.float(), gt_boxes.float(), p=1)
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(gt_boxes.float()))
    cost = w_class * cost_class + w_l1 * cost_l1 + w_giou * cost_giou
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)
