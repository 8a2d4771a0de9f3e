import json

import cv2
from click.testing import CliRunner

from vggt_deploy.cli import main


def test_infer_writes_boxes_and_an_annotated_image(tiny_model_dir, tiny_data, tiny_export, tmp_path):
    image = sorted((tiny_data / "images").iterdir())[0]
    for extra in ([], ["--onnx", str(tiny_export.fp32)]):
        out = tmp_path / ("onnx" if extra else "torch")
        result = CliRunner().invoke(main, ["infer", "--model", str(tiny_model_dir), *extra, "--image", str(image),
                                           "-q", "red circle", "-q", "the small blue square", "-o", str(out)])
        assert result.exit_code == 0, result.output
        boxes = json.loads((out / f"{image.stem}.json").read_text())
        assert [b["query"] for b in boxes] == ["red circle", "the small blue square"]
        assert all(len(b["box"]) == 4 and 0.0 <= b["score"] <= 1.0 for b in boxes)
        drawn = cv2.imread(str(out / f"{image.stem}.png"))
        assert drawn.shape == cv2.imread(str(image)).shape


def test_infer_on_a_missing_image_is_one_line(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_model_dir), "--image", str(tmp_path / "x.png"), "-q", "a"])
    assert result.exit_code == 2 and "x.png: image file not found" in result.output


def test_maps_writes_one_captioned_panel_per_query(tiny_model_dir, tiny_data, tmp_path):
    image = sorted((tiny_data / "images").iterdir())[0]
    out = tmp_path / "maps.png"
    result = CliRunner().invoke(main, ["maps", "--model", str(tiny_model_dir), "--image", str(image),
                                       "-q", "red circle", "-q", "green square", "-o", str(out)])
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out))
    original = cv2.imread(str(image))
    assert sheet.shape[1] == 2 * original.shape[1] and sheet.shape[0] > original.shape[0]
