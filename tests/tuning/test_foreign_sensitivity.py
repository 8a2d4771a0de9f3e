"""Sensitivity and `plan auto` on a model exported elsewhere (an ONNX file), scored by output error.

A tiny ViT-like model (patch Conv, two attention/MLP blocks, a top-level `head` Linear) is exported
with the dynamo exporter, so its layers carry module names; real ONNX Runtime sessions throughout.
"""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import find_layers
from vggt_deploy.graph.onnx_io import load_onnx
from vggt_deploy.quant.plan import load_plan, parse_plan
from vggt_deploy.tuning.auto_plan import AutoConfig, auto_plan
from vggt_deploy.tuning.foreign import ForeignWorkbench
from vggt_deploy.tuning.sensitivity import SensitivityConfig
from vggt_deploy.tuning.units import ATTENTION_UNIT

UNITS = {"patch_embed", "blocks.0", "blocks.1", ATTENTION_UNIT, "head"}


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (m(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(dim), _Attention(dim), nn.LayerNorm(dim), _Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, 8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _TinyViT(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(dim)
        self.blocks = nn.ModuleList([_Block(dim), _Block(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)  # a top-level layer: its unit is just `head`

    def forward(self, images):
        x = self.patch_embed(images)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x.mean(1)), x


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """(onnx file, base plan file, held-out image folder) of the tiny foreign model."""
    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    onnx_file = root / "vit.onnx"
    torch.onnx.export(_TinyViT().eval(), (torch.randn(1, 3, 32, 32),), str(onnx_file), dynamo=True,
                      input_names=["images"], output_names=["logits", "tokens"])
    rng = np.random.default_rng(0)
    for folder in ("calib", "held_out"):
        (root / folder).mkdir()
        for i in range(8):
            cv2.imwrite(str(root / folder / f"{i}.png"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    plan = root / "base.yaml"
    plan.write_text(f"""\
version: 1
target: onnxruntime-cpu
calibration: {{method: minmax, images: {root / 'calib'}, num_images: 8, input: {{name: images, size: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}}}
default: {{precision: int8, weight_granularity: per-channel, activations: static}}
""")
    return onnx_file, plan, root / "held_out"


@pytest.fixture(scope="module")
def bench(foreign, tmp_path_factory):
    onnx_file, plan, held_out = foreign
    return ForeignWorkbench(onnx_file, load_plan(plan), tmp_path_factory.mktemp("work"), held_out,
                            cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VGGT_DEPLOY_CACHE", str(tmp_path / "cache"))  # the CLI's range cache, not the user's


def test_units_and_variant_plans_of_a_foreign_model(bench):
    assert {u.name for u in bench.all_units} == UNITS
    assert bench.num_eval_images == 8 and bench.image_input == "images"
    plan = bench.plan({"blocks.1", ATTENTION_UNIT})
    resolved = plan.resolve(bench.layer_names)
    for unit in bench.all_units:
        quantized = unit.name in {"blocks.1", ATTENTION_UNIT}
        for layer in unit.layers:
            assert (resolved[layer].spec.precision == "int8") == quantized, layer
    # `head` (a layer named like its unit) is selected by its own rule; the plan keeps the calibration input.
    assert resolved["head"].spec.precision == "fp32"
    assert plan.calibration == bench.base.calibration
    assert parse_plan(plan.text).rules == plan.rules
    assert bench.build(frozenset()).name == "fp32.onnx"


def test_foreign_model_has_no_map(bench):
    with pytest.raises(UserError, match="use --metric output-error"):
        bench.score(bench.build(frozenset()), "map", None)


def test_sensitivity_cli_ranks_units_by_output_error(foreign, tmp_path, cache):
    onnx_file, plan, held_out = foreign
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "sensitivity", "--onnx", str(onnx_file), "--data", str(held_out), "--plan", str(plan),
        "--subset-images", "4", "--confirm-top", "1", "--latency-rounds", "3", "--runtime", "onnxruntime",
        "--work", str(tmp_path / "work"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["config"]["metric"] == "output-error" and data["damage_unit"] == "output error %"
    assert data["subset_images"] == 4 and data["confirmation"]["images"] == 8
    assert {u["unit"] for u in data["units"]} == UNITS
    assert all(math.isfinite(u["score"]) and math.isfinite(u["damage_only"]) for u in data["units"])
    assert data["damage_all"] > 0 and data["scores"]["fp32"] == 0.0
    worst = data["agreement"]["all"]
    assert set(worst) == {"logits", "tokens"} and all(0.0 < o["pearson_min"] <= 1.0 for o in worst.values())
    assert "worst-image Pearson r" in (out / "sensitivity.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["sensitivity", "--metric", "map"], "use --metric output-error"),
    (["plan", "auto", "--max-map-drop", "0.01", "-o", "auto.yaml"], "use --max-output-error"),
    (["plan", "auto", "--max-map-drop", "0.01", "--max-output-error", "1", "-o", "auto.yaml"], "give one budget"),
])
def test_map_is_refused_for_foreign_models(foreign, tmp_path, args, message):
    onnx_file, plan, held_out = foreign
    result = CliRunner().invoke(main, [*args, "--onnx", str(onnx_file), "--data", str(held_out), "--plan", str(plan),
                                       "--work", str(tmp_path / "work")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not (tmp_path / "work").exists()  # refused before any work


def test_onnx_needs_held_out_images_and_excludes_model(foreign, tmp_path):
    onnx_file, plan, _ = foreign
    result = CliRunner().invoke(main, ["sensitivity", "--onnx", str(onnx_file), "--plan", str(plan)])
    assert result.exit_code == 2 and "--onnx needs --data" in result.output
    result = CliRunner().invoke(main, ["sensitivity", "--onnx", str(onnx_file), "--model", str(tmp_path),
                                       "--data", str(tmp_path), "--plan", str(plan)])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_plan_auto_meets_an_output_error_budget(foreign, tmp_path, cache):
    onnx_file, plan, held_out = foreign
    out = tmp_path / "auto.yaml"
    budget = 1.5  # % relative L2: below the all-quantized error, so some unit must stay float
    result = CliRunner().invoke(main, [
        "plan", "auto", "--onnx", str(onnx_file), "--data", str(held_out), "--plan", str(plan),
        "--max-output-error", str(budget), "--objective", "size", "--subset-images", "8", "--latency-rounds", "3",
        "--runtime", "onnxruntime", "--work", str(tmp_path / "work"), "-o", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["metric"] == "output-error" and summary["budget_pct"] == budget
    assert result.exit_code == (0 if summary["met"] else 1), result.output
    written = load_plan(out)
    written.resolve([layer.name for layer in find_layers(load_onnx(onnx_file))])  # fits the model
    assert written.calibration.input.name == "images" and written.calibration.input.size == 32
    text = out.read_text()
    assert "output error" in text and "mAP" not in text
    assert "output error %" in out.with_suffix(".md").read_text()
    if summary["met"]:
        assert summary["plan_output_error"] <= budget and summary["drop_pct"] == summary["plan_output_error"]
        assert summary["float"], "a budget below the all-quantized error keeps some unit float"
        assert "output error" in result.output and "budget" in result.output


def test_auto_plan_output_error_is_verified_independently(bench, tmp_path):
    """The written plan, quantized again from its file, has the output error the summary reports."""
    out = tmp_path / "auto.yaml"
    cfg = AutoConfig(max_output_error=50.0, objective="size",
                     sensitivity=SensitivityConfig(images=4, confirm_top=0, latency_rounds=0))
    summary = auto_plan(bench, cfg, out, progress=False)
    # A loose budget quantizes every unit that makes the file smaller (the tiny head's Q/DQ nodes outweigh its weights).
    assert summary["met"] and set(summary["quantized"]) >= {"patch_embed", "blocks.0", "blocks.1"}
    again = bench._quantize(load_plan(out), tmp_path / "again.onnx")
    assert bench.score(again, "output-error", None) == pytest.approx(summary["plan_output_error"])


def test_variant_plans_keep_smoothing_and_the_input_section():
    """A base plan with smoothing, LayerNorm folding and a foreign input section renders variant plans that
    read back the same."""
    from vggt_deploy.graph.layers import Layer
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.tuning.units import model_units, unit_plan

    base = parse_plan("version: 1\ncalibration: {images: x, input: {name: pixels, size: 32}}\n"
                      "default: {precision: int8, smoothing: {alpha: 0.5}}\n"
                      "rules:\n  - match: 'blocks.1.*'\n    smoothing: {alpha: 0.8}\n    fold_norm: true\n")
    layers = [Layer(f"blocks.{i}.mlp.fc1", f"n{i}", "MatMul", f"w{i}") for i in range(2)]
    units = model_units(layers, "block")
    plan = unit_plan(base, units, {u.name for u in units}, [l.name for l in layers])
    assert plan.default.smoothing == 0.5 and plan.calibration.input == base.calibration.input
    resolved = plan.resolve([l.name for l in layers])
    assert resolved["blocks.1.mlp.fc1"].spec.smoothing == 0.8 and resolved["blocks.1.mlp.fc1"].spec.fold_norm
    assert not resolved["blocks.0.mlp.fc1"].spec.fold_norm
