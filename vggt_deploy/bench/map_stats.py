"""Is one target's mAP really above another's? A paired comparison over image shards.

Quantized variants of one model differ here by hundredths of a mAP point, and OpenVINO mAPs of files that
differ only by float rounding move by about as much on a 1000-image split. A single mAP per target cannot
say whether such a gap is more than which images were drawn. Here both targets' detections on the same
images are cut into consecutive shards; pycocotools scores each shard for each target (`coco_map`, never a
re-implementation); the per-shard differences are paired samples, and their mean with a Student-t 95%
interval over shards (the batch-means method) says whether the gap is larger than image-sampling noise.

The interval is about images drawn from the same generator: it does not cover a different data
distribution, and a shard's mAP (100 images) is a noisier estimate than the whole set's, which is why
the whole-set mAPs are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from vggt_deploy.bench.metrics import coco_ground_truth, coco_map
from vggt_deploy.data.coco import ImageRecord


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over shards, in mAP (not points), with its two-sided 95% t interval."""

    mean: float
    low: float
    high: float
    shards: int
    shard_size: int

    @property
    def verdict(self) -> str:
        """'a > b', 'a < b' or 'no difference' at 95%: whether the interval excludes zero."""
        if self.low > 0:
            return "a > b"
        if self.high < 0:
            return "a < b"
        return "no difference"


def shard_maps(records: list[ImageRecord], categories: list[tuple[int, str]], detections: list[dict],
               shard_size: int) -> np.ndarray:
    """mAP@[.5:.95] of each run of `shard_size` consecutive records (a short tail is left out, so every
    shard weighs the same), each scored by pycocotools against a ground truth of that shard's images."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    by_image: dict[int, list[dict]] = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    maps = []
    for start in range(0, len(records) - shard_size + 1, shard_size):
        shard = records[start : start + shard_size]
        dets = [d for r in shard for d in by_image.get(r.image_id, [])]
        maps.append(coco_map(coco_ground_truth(shard, categories), dets)["map"])
    return np.asarray(maps, dtype=np.float64)


def paired_difference(maps_a: np.ndarray, maps_b: np.ndarray, shard_size: int) -> PairedDifference:
    """Mean per-shard difference a - b and its 95% Student-t interval (needs two or more shards)."""
    a, b = np.asarray(maps_a, np.float64), np.asarray(maps_b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length shard mAP vectors of 2+ shards, got {a.shape} and {b.shape}")
    diff = a - b
    mean = float(diff.mean())
    half = float(stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return PairedDifference(mean, mean - half, mean + half, len(diff), shard_size)
