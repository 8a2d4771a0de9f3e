import json
import shutil

import numpy as np
import pytest

from vggt_deploy.data.coco import load_coco
from vggt_deploy.data.preprocess import PreprocessConfig, preprocess, read_image
from vggt_deploy.errors import UserError


def _copy(tiny_data, tmp_path):
    return shutil.copytree(tiny_data, tmp_path / "d")


def test_missing_fields_are_named(tiny_data, tmp_path):
    d = _copy(tiny_data, tmp_path)
    data = json.loads((d / "instances.json").read_text())
    del data["annotations"][3]["bbox"]
    (d / "instances.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances.json: annotations\[3\] is missing field\(s\) \['bbox'\]"):
        load_coco(d)
    del data["categories"]
    (d / "instances.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="missing top-level field 'categories'"):
        load_coco(d)


def test_unknown_references_are_named(tiny_data, tmp_path):
    d = _copy(tiny_data, tmp_path)
    refs = json.loads((d / "refs.json").read_text())
    refs[0]["ann_id"] = 999999
    (d / "refs.json").write_text(json.dumps(refs))
    with pytest.raises(UserError, match=r"refs.json: refs\[0\] refers to unknown ann_id 999999"):
        load_coco(d)


def test_missing_and_unreadable_images(tiny_data, tmp_path):
    d = _copy(tiny_data, tmp_path)
    dataset = load_coco(d)
    first, second = dataset.records[:2]
    (d / "images" / first.file_name).unlink()
    with pytest.raises(UserError, match=f"{first.file_name}: image file not found"):
        dataset.image(first)
    (d / "images" / second.file_name).write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"{second.file_name}: not a readable image"):
        dataset.image(second)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(UserError, match="instances.json: file not found"):
        load_coco(tmp_path)


def test_preprocess_shape_range_and_determinism(tiny_data):
    image = read_image(next((tiny_data / "images").iterdir()))
    cfg = PreprocessConfig(size=32)
    out = preprocess(image, cfg)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert np.array_equal(out, preprocess(image, cfg))
    # RGB order: a pure-blue BGR pixel ends up in channel 2 of the output.
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 0] = 255
    px = preprocess(blue, cfg)[:, 0, 0]
    assert px[2] > px[0] and px[2] > px[1]
    with pytest.raises(UserError, match="expects an"):
        preprocess(np.zeros((4, 4, 4), np.uint8), cfg)
