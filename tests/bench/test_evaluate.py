import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vggt_deploy.bench.evaluate import evaluate
from vggt_deploy.bench.metrics import coco_ground_truth, coco_map, topk_accuracy
from vggt_deploy.boxes import xywh_to_cxcywh
from vggt_deploy.data.coco import load_coco
from vggt_deploy.model.io import load_model


def _oracle(dataset, records):
    """An infer function that returns the ground truth, as a perfect model would."""
    cat_ids = [c for c, _ in dataset.categories]
    it = iter(range(0, len(records), 4))

    def infer(images, queries):
        start = next(it)
        batch = records[start : start + len(images)]
        n = 6
        boxes = np.tile(np.array([0.5, 0.5, 0.01, 0.01], np.float32), (len(batch), n, 1))
        logits = np.full((len(batch), n, len(queries)), -20.0, np.float32)
        q = len(cat_ids)
        for i, r in enumerate(batch):
            boxes[i, : len(r.boxes)] = xywh_to_cxcywh(r.boxes, r.width, r.height)
            for k, c in enumerate(r.category_ids):
                logits[i, k, cat_ids.index(c)] = 20.0
            for _, k in r.refs:
                logits[i, k, q] = 20.0
                q += 1
        cls = np.zeros((len(batch), len(cat_ids)), np.float32)
        for i, r in enumerate(batch):
            cls[i, cat_ids.index(r.label)] = 1.0
        return boxes, logits, cls

    return infer


def test_a_perfect_model_scores_one(tiny_data, tiny_model_dir):
    dataset = load_coco(tiny_data)
    loaded = load_model(tiny_model_dir)
    m = evaluate(loaded, dataset, infer=_oracle(dataset, dataset.records), batch_size=4, progress=False)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["refexp_acc"] == 1.0 and m["top1"] == 1.0 and m["top5"] == 1.0
    assert m["num_images"] == 8 and m["num_refs"] == sum(len(r.refs) for r in dataset.records)


def test_evaluation_reproduces_pycocotools_from_files(tiny_data, tiny_model_dir, tmp_path):
    dataset = load_coco(tiny_data)
    m = evaluate(load_model(tiny_model_dir), dataset, batch_size=3, progress=False)
    assert m["detections"], "an untrained model still reports scored boxes"
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(m["detections"]))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_data / "instances.json"))
        ev = COCOeval(gt, gt.loadRes(str(det_file)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert m["map"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert m["map50"] == pytest.approx(ev.stats[1], abs=1e-12)


def test_limit_scores_a_subset_as_its_own_ground_truth(tiny_data, tiny_model_dir):
    dataset = load_coco(tiny_data)
    m = evaluate(load_model(tiny_model_dir), dataset, limit=3, progress=False)
    assert m["num_images"] == 3
    assert {d["image_id"] for d in m["detections"]} <= {r.image_id for r in dataset.records[:3]}


def test_empty_detections_and_topk():
    gt = coco_ground_truth([], [(1, "a")])
    assert coco_map(gt, [])["map"] == 0.0
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05]])
    labels = np.array([1, 2])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert topk_accuracy(logits, labels, 3) == 1.0
