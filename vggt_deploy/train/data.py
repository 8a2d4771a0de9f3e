"""Training data held in memory: preprocessed images and their targets.

Synthetic scenes are rendered in worker processes and passed through the same
`preprocess` as every other path; a COCO folder on disk (user data) loads the
same way. Images are kept as float16 to halve memory; batches are cast back.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vggt_deploy.boxes import xywh_to_cxcywh
from vggt_deploy.data.coco import GroundingDataset, ImageRecord, scene_record
from vggt_deploy.data.preprocess import PreprocessConfig, preprocess
from vggt_deploy.data.scenes import SPLIT_SEEDS, SceneConfig, generate_scene
from vggt_deploy.data.vocabulary import category_names


@dataclass
class TrainData:
    """Everything a training step samples from."""

    images: torch.Tensor  # (M, 3, H, W) float16, preprocessed
    boxes: list[torch.Tensor]  # M x (K, 4) normalised cx, cy, w, h
    labels: list[torch.Tensor]  # M x (K,) 0-based category index
    image_labels: torch.Tensor  # (M,) 0-based, -1 when unknown
    refs: list[list[tuple[str, int]]]  # M x [(sentence, object index)]

    def __len__(self) -> int:
        return self.images.shape[0]


def _targets(record: ImageRecord, cat_index: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    boxes = torch.from_numpy(xywh_to_cxcywh(record.boxes, record.width, record.height))
    labels = torch.tensor([cat_index[int(c)] for c in record.category_ids], dtype=torch.long)
    label = cat_index[record.label] if record.label is not None else -1
    return boxes, labels, label


def _render(args: tuple[int, int, int, PreprocessConfig, SceneConfig]) -> tuple[np.ndarray, ImageRecord]:
    seed, start, count, pp, scene_cfg = args
    images, records = [], []
    for index in range(start, start + count):
        scene = generate_scene(seed, index, scene_cfg)
        images.append(preprocess(scene.image, pp).astype(np.float16))
        records.append(scene_record(scene, index + 1, f"{index:06d}"))
    return np.stack(images), records


def synthetic_train_data(
    num_images: int, pp: PreprocessConfig, scene_cfg: SceneConfig = SceneConfig(), workers: int = 2, split: str = "train"
) -> TrainData:
    """Render the first `num_images` scenes of a split (deterministic) into memory."""
    chunk = 250
    jobs = [(SPLIT_SEEDS[split], s, min(chunk, num_images - s), pp, scene_cfg) for s in range(0, num_images, chunk)]
    images = torch.empty((num_images, 3, pp.size, pp.size), dtype=torch.float16)  # filled in place: no 2x peak
    records: list[ImageRecord] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for imgs, recs in tqdm(pool.map(_render, jobs), total=len(jobs), desc=f"rendering {split}", unit="chunk"):
            images[len(records) : len(records) + len(recs)] = torch.from_numpy(imgs)
            records.extend(recs)
    cat_index = {i + 1: i for i in range(len(category_names()))}
    return _assemble(images, records, cat_index)


def dataset_train_data(dataset: GroundingDataset, pp: PreprocessConfig) -> TrainData:
    """Load and preprocess a COCO dataset folder into memory."""
    cat_index = {cid: i for i, (cid, _) in enumerate(dataset.categories)}
    images = [preprocess(dataset.image(r), pp).astype(np.float16) for r in tqdm(dataset.records, desc="loading", unit="img")]
    return _assemble(torch.from_numpy(np.stack(images)), dataset.records, cat_index)


def _assemble(images: torch.Tensor, records: list[ImageRecord], cat_index: dict[int, int]) -> TrainData:
    boxes, labels, image_labels = [], [], []
    for record in records:
        b, l, label = _targets(record, cat_index)
        boxes.append(b)
        labels.append(l)
        image_labels.append(label)
    return TrainData(images=images, boxes=boxes, labels=labels,
                     image_labels=torch.tensor(image_labels, dtype=torch.long), refs=[r.refs for r in records])
