"""Bad command-line arguments: click's own usage errors and paths the file system refuses are one line too."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vggt_deploy.cli import main

LONG = "a" * 5000

CASES = {
    "unknown-device": ["bench", "--device", "gpu"],
    "zero-eval-images": ["eval", "--eval-images", "0"],
    "negative-batch": ["bench", "--batch-size", "-1"],
    "unknown-option": ["export", "--plann", "mixed"],
    "missing-plan-value": ["plan", "show", "--plan"],
    "unknown-command": ["exprot"],
    "unknown-train-config": ["train", "--config", "vggt_huge", "-o", "x"],
    "bad-unit-kind": ["sensitivity", "--unit", "stage"],
    "bad-metric": ["sensitivity", "--metric", "acc"],
    "bad-objective": ["plan", "auto", "--max-map-drop", "0.01", "--objective", "speed", "-o", "p.yaml"],
    "drop-out-of-range": ["plan", "auto", "--max-map-drop", "7", "-o", "p.yaml"],
    "bad-target": ["export", "--target", "gpu"],
    "bad-level": ["build-ort", "--onnx", "x.onnx", "-o", "y.onnx", "--level", "max"],
    "bad-split": ["data", "generate", "--split", "test", "-o", "d"],
    "long-plan-name": ["plan", "show", "--plan", LONG],
    "long-model-folder": ["export", "--model", LONG],
    "long-onnx-file": ["eval", "--onnx", LONG],
    "long-image": ["infer", "--image", LONG, "-q", "red circle"],
}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_arguments_are_one_error_line(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert len(lines[0]) < 400  # a 5000-character path is shortened in the message
    assert list(tmp_path.iterdir()) == []  # nothing written
