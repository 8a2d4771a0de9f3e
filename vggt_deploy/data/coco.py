"""COCO-format grounding datasets: reading (validated), writing, and the synthetic splits.

On disk a dataset is a folder with ``instances.json`` (standard COCO detection
JSON, which pycocotools reads) and optionally ``refs.json`` (RefCOCO-style
referring expressions as JSON: ``[{ref_id, image_id, ann_id, sentences:
[{sent}]}]``) and ``images/``. The same loader serves synthetic and user data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vggt_deploy.data.preprocess import read_image
from vggt_deploy.data.scenes import SPLIT_SEEDS, Scene, SceneConfig, generate_scene, object_area, scene_config_dict
from vggt_deploy.data.vocabulary import SHAPES, category_id, category_names
from vggt_deploy.errors import UserError
from vggt_deploy.outputs import OutputFolder, check_output_path
from vggt_deploy.paths import cache_dir


@dataclass
class ImageRecord:
    """One image and its annotations; boxes are COCO pixel (x, y, w, h)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (K, 4)
    category_ids: np.ndarray  # (K,)
    ann_ids: np.ndarray  # (K,)
    refs: list[tuple[str, int]] = field(default_factory=list)  # (sentence, annotation index)
    label: int | None = None  # image-level category id
    areas: np.ndarray | None = None  # (K,) COCO 'area'; box area when absent


@dataclass
class GroundingDataset:
    """Validated records plus the category list, ready for training or evaluation."""

    root: Path
    ann_file: Path
    categories: list[tuple[int, str]]
    records: list[ImageRecord]

    @property
    def category_names(self) -> list[str]:
        return [name for _, name in self.categories]

    def image_path(self, record: ImageRecord) -> Path:
        images = self.root / "images"
        return images / record.file_name if images.is_dir() else self.root / record.file_name

    def image(self, record: ImageRecord) -> np.ndarray:
        """The record's image as BGR uint8 (a clear error if missing or unreadable)."""
        return read_image(self.image_path(record))

    def check_images(self, records: list[ImageRecord] | None = None) -> None:
        """Refuse before any work if an image file is missing (names the first one)."""
        for record in self.records if records is None else records:
            path = self.image_path(record)
            if not path.is_file():
                raise UserError(f"{path}: image file not found (listed in {self.ann_file})")


def _json(path: Path) -> object:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _require(items: object, section: str, keys: tuple[str, ...], path: Path) -> list[dict]:
    if not isinstance(items, list):
        raise UserError(f"{path}: '{section}' must be a list")
    for i, item in enumerate(items):
        missing = [k for k in keys if not isinstance(item, dict) or k not in item]
        if missing:
            raise UserError(f"{path}: {section}[{i}] is missing field(s) {missing}")
    return items


def load_coco(root: str | Path, ann_file: str | Path | None = None, refs_file: str | Path | None = None) -> GroundingDataset:
    """Load and validate a COCO grounding dataset folder (see module docstring)."""
    root = Path(root)
    ann_path = Path(ann_file) if ann_file else root / "instances.json"
    data = _json(ann_path)
    if not isinstance(data, dict):
        raise UserError(f"{ann_path}: top level must be a JSON object with images, annotations, categories")
    for section in ("images", "annotations", "categories"):
        if section not in data:
            raise UserError(f"{ann_path}: missing top-level field '{section}'")
    images = _require(data["images"], "images", ("id", "file_name", "width", "height"), ann_path)
    anns = _require(data["annotations"], "annotations", ("id", "image_id", "category_id", "bbox"), ann_path)
    cats = _require(data["categories"], "categories", ("id", "name"), ann_path)
    cat_ids = {c["id"] for c in cats}
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in images}
    for i, ann in enumerate(anns):
        if ann["image_id"] not in by_image:
            raise UserError(f"{ann_path}: annotations[{i}] refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in cat_ids:
            raise UserError(f"{ann_path}: annotations[{i}] has unknown category_id {ann['category_id']}")
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise UserError(f"{ann_path}: annotations[{i}].bbox must be [x, y, w, h]")
        by_image[ann["image_id"]].append(ann)
    labels = {x["image_id"]: x["category_id"] for x in data.get("image_labels", [])}
    records = []
    for img in images:
        img_anns = by_image[img["id"]]
        records.append(
            ImageRecord(
                image_id=img["id"], file_name=img["file_name"], width=int(img["width"]), height=int(img["height"]),
                boxes=np.array([a["bbox"] for a in img_anns], dtype=np.float32).reshape(-1, 4),
                category_ids=np.array([a["category_id"] for a in img_anns], dtype=np.int64),
                ann_ids=np.array([a["id"] for a in img_anns], dtype=np.int64),
                label=labels.get(img["id"]),
                areas=np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in img_anns], dtype=np.float64),
            )
        )
    refs_path = Path(refs_file) if refs_file else root / "refs.json"
    if refs_file or refs_path.is_file():
        _attach_refs(records, refs_path)
    categories = sorted((c["id"], c["name"]) for c in cats)
    return GroundingDataset(root=root, ann_file=ann_path, categories=categories, records=records)


def _attach_refs(records: list[ImageRecord], path: Path) -> None:
    refs = _require(_json(path), "refs", ("image_id", "ann_id", "sentences"), path)
    by_id = {r.image_id: r for r in records}
    for i, ref in enumerate(refs):
        record = by_id.get(ref["image_id"])
        if record is None:
            raise UserError(f"{path}: refs[{i}] refers to unknown image_id {ref['image_id']}")
        hits = np.flatnonzero(record.ann_ids == ref["ann_id"])
        if len(hits) != 1:
            raise UserError(f"{path}: refs[{i}] refers to unknown ann_id {ref['ann_id']}")
        for sentence in ref["sentences"]:
            text = sentence["sent"] if isinstance(sentence, dict) else sentence
            record.refs.append((str(text), int(hits[0])))


def scene_record(scene: Scene, image_id: int, file_name: str) -> ImageRecord:
    """The COCO record of a generated scene (annotation ids: image_id * 100 + k)."""
    objs = scene.objects
    return ImageRecord(
        image_id=image_id, file_name=file_name, width=scene.image.shape[1], height=scene.image.shape[0],
        boxes=np.array([o.box for o in objs], dtype=np.float32).reshape(-1, 4),
        category_ids=np.array([category_id(o.colour, o.shape) for o in objs], dtype=np.int64),
        ann_ids=np.array([image_id * 100 + k for k in range(len(objs))], dtype=np.int64),
        refs=[(s, k) for k, sentences in scene.refs for s in sentences],
        label=scene.label,
        areas=np.array([round(object_area(o), 2) for o in objs], dtype=np.float64),
    )


def _dump(obj: object, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


SYNTHETIC_DESCRIPTION = "vggt-deploy synthetic grounding scenes"


def _previous_split(out_dir: Path) -> set[str]:
    """The files of a split this tool wrote earlier in `out_dir` (by its instances.json), else nothing."""
    try:
        data = json.loads((out_dir / "instances.json").read_text())
        if data["info"]["description"] != SYNTHETIC_DESCRIPTION:
            return set()
        return {"instances.json", "refs.json", "images"} | {f"images/{img['file_name']}" for img in data["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write_split(out_dir: str | Path, split: str, num_images: int, cfg: SceneConfig = SceneConfig(), progress: bool = True) -> Path:
    """Generate `num_images` scenes of `split` into `out_dir` (all together: temporary folder, then rename).

    The same arguments always give byte-identical files. An existing `out_dir` is replaced only when it
    is empty or holds nothing but a split this tool wrote; anything else is refused.
    """
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    out_dir = Path(out_dir)
    check_output_path(out_dir, [], folder=True)
    with OutputFolder(out_dir, replaces=_previous_split(out_dir)) as tmp:
        (tmp / "images").mkdir()
        images, anns, refs, labels = [], [], [], []
        for index in tqdm(range(num_images), desc=f"generating {split}", disable=not progress, unit="img"):
            scene = generate_scene(SPLIT_SEEDS[split], index, cfg)
            image_id = index + 1
            file_name = f"{split}_{index:06d}.png"
            cv2.imwrite(str(tmp / "images" / file_name), scene.image)
            images.append({"id": image_id, "file_name": file_name, "width": scene.image.shape[1], "height": scene.image.shape[0]})
            record = scene_record(scene, image_id, file_name)
            for k, obj in enumerate(scene.objects):
                x, y, w, h = obj.box
                anns.append({"id": int(record.ann_ids[k]), "image_id": image_id, "category_id": int(record.category_ids[k]),
                             "bbox": [x, y, w, h], "area": round(object_area(obj), 2), "iscrowd": 0, "size": obj.size})
            for k, sentences in scene.refs:
                refs.append({"ref_id": len(refs) + 1, "image_id": image_id, "ann_id": int(record.ann_ids[k]),
                             "category_id": int(record.category_ids[k]), "split": split,
                             "sentences": [{"sent": s} for s in sentences]})
            labels.append({"image_id": image_id, "category_id": scene.label})
        categories = [{"id": i + 1, "name": n, "supercategory": n.split()[1]} for i, n in enumerate(category_names())]
        assert all(c["supercategory"] in SHAPES for c in categories)
        info = {"description": SYNTHETIC_DESCRIPTION, "split": split,
                "seed": SPLIT_SEEDS[split], "num_images": num_images, "scene_config": scene_config_dict(cfg)}
        _dump({"info": info, "images": images, "annotations": anns, "categories": categories, "image_labels": labels},
              tmp / "instances.json")
        _dump(refs, tmp / "refs.json")
    return out_dir


def synthetic_split(split: str, num_images: int, cfg: SceneConfig = SceneConfig()) -> Path:
    """The folder of a generated split, generating it on first use."""
    tag = "" if cfg == SceneConfig() else f"_{cfg.background}"
    path = cache_dir() / f"{split}_{num_images}{tag}"
    if not (path / "instances.json").is_file():
        write_split(path, split, num_images, cfg)
    return path
