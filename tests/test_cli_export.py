"""export / plan show / check / eval --onnx through the command line on the tiny model."""

import json
from pathlib import Path

from click.testing import CliRunner

from vggt_deploy.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_with_a_plan_writes_everything_atomically(tiny_model_dir, tiny_plan_text, tmp_path):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(tiny_plan_text)
    out = tmp_path / "out"
    result = _run("export", "--model", tiny_model_dir, "--plan", plan, "--target", "tensorrt", "-o", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.qdq.onnx", "report.json", "export.json",
                                               "queries.npy", "queries.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "tensorrt" and report["tensorrt_validation"] == "passed"
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["blocks.1.mlp.fc1"]["weight_granularity"] == "per-tensor"
    assert rows["blocks.0.mlp.fc1"]["weight_granularity"] == "per-channel"
    assert rows["heads.cls.fc"]["precision"] == "fp32"
    check = _run("check", out / "model.qdq.onnx")
    assert check.exit_code == 0 and "passes" in check.output


def test_plan_show_prints_the_resolved_table(tiny_export, tiny_plan_text, tmp_path):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(tiny_plan_text)
    result = _run("plan", "show", "--onnx", tiny_export.fp32, "--plan", plan)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[2:]}
    assert lines["blocks.1.attn.q"][2:5] == ["int8", "per-tensor", "static"]
    assert lines["blocks.0.attn.q"][2:5] == ["int8", "per-channel", "static"]
    assert lines["grounding.0.mlp.fc1"][2] == "fp32"
    assert lines["blocks.0.attn.qk"][4] == "float"  # attention matmuls stay float unless asked


def test_check_lists_violations_of_an_ort_flavour_model(tiny_model_dir, tiny_plan_text, tmp_path):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(tiny_plan_text)
    out = tmp_path / "ort"
    assert _run("export", "--model", tiny_model_dir, "--plan", plan, "-o", out).exit_code == 0
    result = _run("check", out / "model.qdq.onnx")
    assert result.exit_code == 1
    assert "zero point type UINT8" in result.output


def test_eval_onnx_reports_the_same_keys(tiny_export, tiny_model_dir, tiny_data):
    result = _run("eval", "--model", tiny_model_dir, "--onnx", tiny_export.fp32, "--data", tiny_data, "--json")
    assert result.exit_code == 0, result.output
    onnx_metrics = json.loads(result.output.strip().splitlines()[-1])
    torch_metrics = json.loads(_run("eval", "--model", tiny_model_dir, "--data", tiny_data, "--json").output.strip().splitlines()[-1])
    for key in ("map", "map50", "refexp_acc", "top1", "top5", "num_images"):
        assert abs(onnx_metrics[key] - torch_metrics[key]) < 1e-3, key


def test_bad_plan_and_bad_onnx_are_one_line_errors(tiny_model_dir, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: 1\nrules: [\n")
    result = _run("export", "--model", tiny_model_dir, "--plan", bad_yaml, "-o", tmp_path / "o1")
    assert result.exit_code == 2 and "bad.yaml:" in result.output and "malformed YAML" in result.output
    other_model = tmp_path / "other.yaml"
    other_model.write_text("version: 1\nrules:\n  - match: 'encoder.layers.*'\n    precision: fp32\n")
    result = _run("export", "--model", tiny_model_dir, "--plan", other_model, "-o", tmp_path / "o2")
    assert result.exit_code == 2 and "matches no layer" in result.output
    assert not (tmp_path / "o2").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    result = _run("export", "--onnx", junk, "--plan", other_model, "-o", tmp_path / "o3")
    assert result.exit_code == 2 and "junk.onnx: not a valid ONNX model" in result.output


def _foreign_onnx(tmp_path: Path) -> Path:
    """A small image classifier exported elsewhere: input `pixels` [1, 3, 16, 16], layers named `0` and `3`."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 16 * 16, 10)).eval()
    onnx_file = tmp_path / "foreign.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(onnx_file), dynamo=True, input_names=["pixels"],
                      verbose=False).save(str(onnx_file))
    return onnx_file


def test_quantize_a_foreign_onnx_model(tmp_path):
    """Any single-input image model exported elsewhere: rules match ONNX node or module names."""
    onnx_file = _foreign_onnx(tmp_path)
    plan = tmp_path / "foreign.yaml"
    plan.write_text("""\
version: 1
target: tensorrt
calibration:
  method: minmax
  images: calib_data
  num_images: 4
  input: {name: pixels, size: 16, mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}
default: {precision: int8}
rules:
  - match: "3"
    precision: fp32
""")
    out = tmp_path / "out"
    result = _run("export", "--onnx", onnx_file, "--plan", plan, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["0"]["activations"] == "static" and rows["3"]["precision"] == "fp32"


def test_foreign_model_agreement_on_held_out_images(tmp_path):
    """`export --onnx --eval-images`: the report and the summary give agreement with FP32 per output."""
    onnx_file = _foreign_onnx(tmp_path)
    plan = tmp_path / "foreign.yaml"
    plan.write_text("version: 1\ncalibration:\n  images: calib_data\n  num_images: 4\n"
                    "  input: {name: pixels, size: 16}\ndefault: {precision: int8}\n")
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(held_out / f"{i}.png"), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    out = tmp_path / "out"
    result = _run("export", "--onnx", onnx_file, "--plan", plan, "--eval-images", held_out, "-o", out)
    assert result.exit_code == 0, result.output
    agreement = json.loads((out / "report.json").read_text())["agreement"]
    assert agreement["num_images"] == 3
    (name, d), = agreement["outputs"].items()
    assert 0.9 < d["pearson_min"] <= d["pearson_mean"] <= 1.0
    assert f"{name}: Pearson r mean" in result.output and "worst image" in result.output
    bad = _run("export", "--onnx", onnx_file, "--plan", plan, "--eval-images", tmp_path / "nope", "-o", tmp_path / "o2")
    assert bad.exit_code == 2 and "nope" in bad.output and not (tmp_path / "o2").exists()


def test_plan_show_resolves_on_the_graph_export_writes(tiny_model_dir):
    """`plan show` names layers as export does (module paths, not Gemm node names), so every shipped plan resolves."""
    result = _run("plan", "show", "--model", tiny_model_dir, "--plan", "int8")
    assert result.exit_code == 0, result.output
    assert "blocks.0.attn.q " in result.output and "val_" not in result.output


def test_export_summarises_norm_folding_and_smoothing(tiny_model_dir, tmp_path):
    """The weight rewrites a plan asks for are summarised on the console, with the counts of report.json."""
    plan = tmp_path / "fold.yaml"
    plan.write_text("version: 1\ntarget: openvino-cpu\ncalibration: {method: minmax, images: calib_data, num_images: 6}\n"
                    "default: {precision: int8, activations: static, smoothing: {alpha: 0.5}, fold_norm: true}\n")
    out = tmp_path / "out"
    result = _run("export", "--model", tiny_model_dir, "--plan", plan, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    folding, smoothing = report["norm_folding"], report["smoothing"]
    assert folding["folded"], "the tiny model's pre-norm LayerNorms fold"
    assert (f"LayerNorm folding: {len(folding['folded'])} folded into their readers, "
            f"{len(folding['skipped'])} left") in result.output
    assert f"smoothing: {len(smoothing['groups'])} activation(s) smoothed" in result.output
