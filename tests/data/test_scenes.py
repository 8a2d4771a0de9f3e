import json

import numpy as np
from pycocotools.coco import COCO

from vggt_deploy.data.coco import load_coco, write_split
from vggt_deploy.data.referring import resolve
from vggt_deploy.data.scenes import SPLIT_SEEDS, SceneConfig, generate_scene
from vggt_deploy.data.vocabulary import COLOURS, SHAPES, SIZES


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_split(tmp_path / "a", "eval", 5, progress=False)
    b = write_split(tmp_path / "b", "eval", 5, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 5 + 2
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_splits_differ():
    train = generate_scene(SPLIT_SEEDS["train"], 0).image
    evaluation = generate_scene(SPLIT_SEEDS["eval"], 0).image
    assert not np.array_equal(train, evaluation)


def test_every_expression_resolves_to_exactly_its_object():
    seen_relational = 0
    for index in range(300):
        scene = generate_scene(SPLIT_SEEDS["train"], index)
        for target, sentences in scene.refs:
            for sentence in sentences:
                assert resolve(sentence, scene.objects) == [target], sentence
                seen_relational += any(r in sentence for r in (" left of ", " right of ", " above ", " below "))
    assert seen_relational > 50


def test_scenes_cover_the_vocabulary_and_stay_in_bounds():
    shapes, colours, sizes = set(), set(), set()
    cfg = SceneConfig()
    for index in range(200):
        scene = generate_scene(SPLIT_SEEDS["train"], index, cfg)
        assert scene.image.shape == (cfg.canvas, cfg.canvas, 3)
        assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
        for obj in scene.objects:
            x, y, w, h = obj.box
            assert 0 <= x and 0 <= y and x + w <= cfg.canvas and y + h <= cfg.canvas
            shapes.add(obj.shape), colours.add(obj.colour), sizes.add(obj.size)
    assert shapes == set(SHAPES) and colours == set(COLOURS) and sizes == set(SIZES)


def test_background_domains_differ():
    a = generate_scene(7, 0, SceneConfig(background="clutter")).image
    b = generate_scene(7, 0, SceneConfig(background="stripes")).image
    assert not np.array_equal(a, b)


def test_pycocotools_reads_the_files_and_loader_agrees(tiny_data):
    coco = COCO(str(tiny_data / "instances.json"))
    assert len(coco.getImgIds()) == 8
    assert len(coco.getCatIds()) == 18
    dataset = load_coco(tiny_data)
    assert sum(len(r.boxes) for r in dataset.records) == len(coco.getAnnIds())
    refs = json.loads((tiny_data / "refs.json").read_text())
    assert sum(len(r["sentences"]) for r in refs) == sum(len(r.refs) for r in dataset.records)
    assert all(r.label is not None for r in dataset.records)


def test_calibration_set_is_verified_by_its_manifest(tmp_path):
    import pytest

    from vggt_deploy.data.calib_set import calibration_files, write_calibration_set
    from vggt_deploy.errors import UserError

    folder = write_calibration_set(tmp_path / "calib", 3)
    files = calibration_files(folder)
    assert [p.name for p in files] == ["calib_0000.jpg", "calib_0001.jpg", "calib_0002.jpg"]
    files[1].write_bytes(files[1].read_bytes()[:-10])
    with pytest.raises(UserError, match="calib_0001.jpg: sha256 differs"):
        calibration_files(folder)


def test_shipped_calibration_set_is_intact_and_disjoint():
    from pathlib import Path

    from vggt_deploy.data.calib_set import calibration_files

    folder = Path(__file__).resolve().parents[2] / "calib_data"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == SPLIT_SEEDS["calib"] not in (SPLIT_SEEDS["train"], SPLIT_SEEDS["eval"])
    assert len(calibration_files(folder)) == manifest["num_images"] >= 200
