"""The command line: help, JSON output, and one-line errors for bad input."""

import json
import shutil

from click.testing import CliRunner

from vggt_deploy.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "data"):
        assert command in result.output


def test_eval_json_has_the_promised_keys(tiny_model_dir, tiny_data):
    result = _run("eval", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    for key in ("map", "map50", "refexp_acc", "top1", "top5", "num_images"):
        assert key in metrics
    assert metrics["num_images"] == 8


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model_name(tmp_path):
    _one_error_line(_run("train", "--config", "vggt_huge", "-o", str(tmp_path / "m")), "vggt_huge", "vggt_small")


def test_checkpoint_with_wrong_sha256(tiny_model_dir, tiny_data, tmp_path):
    bad = shutil.copytree(tiny_model_dir, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["weights_sha256"] = "0" * 64
    (bad / "config.json").write_text(json.dumps(cfg))
    _one_error_line(_run("eval", "--model", str(bad), "--data", str(tiny_data)), "model.safetensors", "sha256 mismatch")


def test_missing_image(tiny_model_dir, tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "d")
    victim = sorted((data / "images").iterdir())[0]
    victim.unlink()
    _one_error_line(_run("eval", "--model", str(tiny_model_dir), "--data", str(data)), victim.name, "not found")


def test_coco_file_with_missing_fields(tiny_model_dir, tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "d")
    coco = json.loads((data / "instances.json").read_text())
    del coco["images"][0]["width"]
    (data / "instances.json").write_text(json.dumps(coco))
    _one_error_line(_run("eval", "--model", str(tiny_model_dir), "--data", str(data)), "instances.json", "width")


def test_data_generate_writes_a_split(tmp_path):
    result = _run("data", "generate", "--split", "calib", "-n", "3", "-o", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "c" / "images").iterdir())) == 3
