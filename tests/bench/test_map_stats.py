"""Paired shard comparison of two targets' mAPs (vggt_deploy.bench.map_stats), on real pycocotools scores."""

import numpy as np
import pytest

from vggt_deploy.bench.map_stats import paired_difference, shard_maps
from vggt_deploy.bench.metrics import coco_ground_truth, coco_map
from vggt_deploy.data.coco import ImageRecord

CATEGORIES = [(1, "cube"), (2, "ball")]


def _records(n: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        k = int(rng.integers(1, 3))
        xy = rng.uniform(0, 60, size=(k, 2))
        wh = rng.uniform(20, 40, size=(k, 2))
        records.append(ImageRecord(image_id=i + 1, file_name=f"{i}.png", width=128, height=128,
                                   boxes=np.concatenate([xy, wh], 1), category_ids=rng.integers(1, 3, size=k),
                                   ann_ids=np.arange(10 * i, 10 * i + k)))
    return records


def _detections(records: list[ImageRecord], jitter: float, seed: int) -> list[dict]:
    """One detection per ground-truth box, its corner moved by up to `jitter` pixels."""
    rng = np.random.default_rng(seed)
    dets = []
    for r in records:
        for box, cat in zip(r.boxes, r.category_ids):
            moved = box + np.r_[rng.uniform(-jitter, jitter, 2), 0, 0]
            dets.append({"image_id": r.image_id, "category_id": int(cat), "bbox": [float(v) for v in moved],
                         "score": 0.9})
    return dets


def test_shards_are_scored_by_pycocotools_on_their_own_images_and_a_short_tail_is_left_out():
    records = _records(45)
    dets = _detections(records, jitter=6.0, seed=1)
    maps = shard_maps(records, CATEGORIES, dets, shard_size=10)
    assert len(maps) == 4
    shard = records[10:20]
    ids = {r.image_id for r in shard}
    direct = coco_map(coco_ground_truth(shard, CATEGORIES), [d for d in dets if d["image_id"] in ids])["map"]
    assert maps[1] == pytest.approx(direct)
    assert 0.0 < maps.min() < 1.0


def test_identical_detections_differ_by_nothing():
    records = _records(40)
    maps = shard_maps(records, CATEGORIES, _detections(records, jitter=6.0, seed=1), shard_size=10)
    d = paired_difference(maps, maps.copy(), shard_size=10)
    assert (d.mean, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.verdict == "no difference"
    assert d.shards == 4


def test_a_consistently_better_variant_is_called_better_and_the_order_matters():
    records = _records(60)
    exact = shard_maps(records, CATEGORIES, _detections(records, jitter=0.0, seed=1), shard_size=10)
    jittered = shard_maps(records, CATEGORIES, _detections(records, jitter=8.0, seed=2), shard_size=10)
    better = paired_difference(exact, jittered, shard_size=10)
    assert better.low > 0 and better.verdict == "a > b"
    assert better.mean == pytest.approx(float(np.mean(exact - jittered)))
    worse = paired_difference(jittered, exact, shard_size=10)
    assert worse.high < 0 and worse.verdict == "a < b"


def test_two_draws_of_the_same_noise_are_not_called_different():
    records = _records(200)
    a = shard_maps(records, CATEGORIES, _detections(records, jitter=6.0, seed=3), shard_size=20)
    b = shard_maps(records, CATEGORIES, _detections(records, jitter=6.0, seed=4), shard_size=20)
    d = paired_difference(a, b, shard_size=20)
    assert d.low < 0 < d.high
    assert d.verdict == "no difference"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shard_size"):
        shard_maps(_records(4), CATEGORIES, [], shard_size=0)
    with pytest.raises(ValueError, match="2\\+ shards"):
        paired_difference(np.array([0.5]), np.array([0.4]), shard_size=10)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(np.array([0.5, 0.6]), np.array([0.4, 0.4, 0.4]), shard_size=10)
