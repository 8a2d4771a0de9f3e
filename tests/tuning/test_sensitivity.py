"""Sensitivity analysis and the automatic plan on the tiny model (real exports, ORT sessions, pycocotools)."""

import json

import cv2
import pytest
from click.testing import CliRunner

from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.quant.plan import parse_plan
from vggt_deploy.tuning.auto_plan import AutoConfig, auto_plan, choose, predicted_drop
from vggt_deploy.tuning.sensitivity import SensitivityConfig, UnitResult, above_noise, run_sensitivity, timing_noise
from vggt_deploy.tuning.sensitivity_report import write_sensitivity
from vggt_deploy.tuning.units import ATTENTION_UNIT, select_units
from vggt_deploy.tuning.variants import Workbench

BASE = """\
version: 1
target: onnxruntime-cpu
calibration: {method: minmax, images: calib_data, num_images: 6}
default: {precision: int8, weight_granularity: per-channel, activations: static}
"""


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tiny_data, tmp_path_factory):
    return Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml"), tmp_path_factory.mktemp("sens"), data_dir=tiny_data,
                     cache_dir=tmp_path_factory.mktemp("cache"))


def test_units_cover_the_model_and_plans_do_what_they_say(bench):
    names = [u.name for u in bench.all_units]
    assert {"patch_embed", "blocks.0", "blocks.1", "grounding.0", "heads", ATTENTION_UNIT} <= set(names)
    plan = bench.plan({"blocks.1", ATTENTION_UNIT})
    resolved = plan.resolve(bench.layer_names)
    for unit in bench.all_units:
        for layer in unit.layers:
            spec = resolved[layer].spec
            if unit.name == ATTENTION_UNIT:
                assert spec.attention_matmuls and spec.precision == "int8"
            elif unit.name == "blocks.1":
                assert spec.precision == "int8"
            else:
                assert spec.precision == "fp32", layer
    # The generated text is an ordinary plan: it parses to the same rules.
    assert parse_plan(plan.text).rules == plan.rules


def test_tensorrt_flavour_variants_pass_tensorrt_rules(tiny_model_dir, tiny_data, tmp_path):
    import onnx

    from vggt_deploy.backends.tensorrt.rules import validate_tensorrt

    trt = Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml", target="tensorrt"), tmp_path, data_dir=tiny_data,
                    cache_dir=tmp_path / "cache")
    everything = trt.build({u.name for u in trt.units})  # attention matmuls included; build() validates too
    assert validate_tensorrt(onnx.load(str(everything))) == []
    assert trt.plan({u.name for u in trt.units}).target == "tensorrt"


def test_layer_units_select_exactly_their_layer(bench):
    from vggt_deploy.quant.plan import Rule
    from vggt_deploy.tuning.units import model_units

    units = model_units(bench.layers, "layer")
    assert [u.name for u in units] == bench.layer_names
    for unit in units:
        assert [n for n in bench.layer_names if Rule(unit.pattern, {}, 0).matches(n)] == [unit.name]
    with pytest.raises(UserError, match="unknown unit kind"):
        model_units(bench.layers, "stage")


def test_unknown_unit_is_a_clear_error(bench):
    with pytest.raises(UserError, match=r"unknown unit 'blocks\.7'.*did you mean"):
        select_units(bench.all_units, ["blocks.7"])


def test_ranking_is_stable_and_damage_is_real(bench, tiny_model_dir, tiny_data, tmp_path):
    cfg = SensitivityConfig(metric="output-error", images=8, confirm_top=2, latency_rounds=0)
    first = run_sensitivity(bench, cfg, progress=False)
    other = Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml"), tmp_path, data_dir=tiny_data,
                      cache_dir=bench.cache_dir)
    second = run_sensitivity(other, cfg, progress=False)
    assert [u.unit for u in first.units] == [u.unit for u in second.units]
    assert [u.score for u in first.units] == pytest.approx([u.score for u in second.units], abs=1e-6)
    # Quantizing any unit with weights moves the outputs; everything quantized moves them most.
    weighted = [u for u in first.units if u.unit != ATTENTION_UNIT]
    assert all(u.damage_only > 0 for u in weighted)
    assert first.scores["all"] >= max(u.damage_only for u in first.units)
    scores = [u.score for u in first.units]
    assert scores == sorted(scores, reverse=True)
    assert first.confirmation["top_units_subset_order"] == [u.unit for u in first.units[:2]]
    assert first.runtime == "openvino"  # latency savings are timed where the plan will run

    paths = write_sensitivity(first.to_json(), tmp_path / "out")
    table = paths["md"].read_text()
    assert all(f"| {u.unit} |" in table for u in first.units)
    assert json.loads(paths["json"].read_text())["units"][0]["unit"] == first.units[0].unit
    image = cv2.imread(str(paths["png"]))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    # BENCHMARKS.md picks the table and chart up from the results folder.
    from vggt_deploy.bench.benchmarks_doc import render_benchmarks

    md = render_benchmarks(tmp_path / "out", tmp_path / "BENCHMARKS.md").read_text()
    assert "## Sensitivity" in md and "out/sensitivity.png" in md and f"| {first.units[0].unit} |" in md


def _unit(name, damage_only, recovery, latency, size):
    return UnitResult(name, 1, damage_only, 0.0, recovery, 0.0, latency, size)


def test_choice_respects_the_predicted_budget():
    rows = {"a": _unit("a", 0.5, 0.4, 1.0, 1.0), "b": _unit("b", 0.1, 0.1, 0.5, 3.0), "c": _unit("c", -0.2, 0.0, 0.2, 0.5)}
    damage_all = 0.6
    assert choose(rows, damage_all, 1.0, "latency") == frozenset("abc")
    assert choose(rows, damage_all, 0.3, "latency") == frozenset("bc")
    assert predicted_drop(rows, frozenset("bc"), damage_all) == pytest.approx(0.2)
    assert choose(rows, damage_all, -0.1, "latency") is None


def test_savings_within_the_timing_noise_count_as_zero():
    latency = {"fp32": 10.0, "fp32#repeat": 10.3, "all": 8.0, "all#repeat": 8.1, "only:a": 9.9}
    noise = timing_noise(latency)
    assert noise == pytest.approx(0.3)
    assert above_noise(0.2, noise) == 0.0 and above_noise(-0.25, noise) == 0.0
    assert above_noise(0.5, noise) == 0.5 and above_noise(None, noise) is None
    assert timing_noise({"fp32": 1.0}) is None and above_noise(0.01, None) == 0.01


def test_auto_plan_meets_a_loose_budget(bench, tmp_path):
    out = tmp_path / "auto.yaml"
    cfg = AutoConfig(max_map_drop=0.5, objective="size",
                     sensitivity=SensitivityConfig(metric="map", images=8, confirm_top=0, latency_rounds=2))
    summary = auto_plan(bench, cfg, out, progress=False)
    assert summary["met"] and summary["drop_points"] <= 50.0
    # Size savings are all positive and the budget is loose: every unit with weights is quantized.
    assert set(summary["quantized"]) >= {u.name for u in bench.units if u.name != ATTENTION_UNIT}
    plan = parse_plan(out.read_text(), str(out))
    plan.resolve(bench.layer_names)
    assert "Verified on the full eval split" in out.read_text() and "points" in out.read_text()


def test_cli_unmeetable_budget_writes_best_plan(tiny_model_dir, tiny_data, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(BASE)
    out = tmp_path / "auto.yaml"
    args = ["plan", "auto", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--plan", str(base),
            "--subset-images", "8", "--work", str(tmp_path / "work"), "--max-map-drop", "-0.5", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "budget not met" in result.output and out.is_file() and out.with_suffix(".md").is_file()
    assert "NOT MET" in out.read_text()
    parse_plan(out.read_text())

    bad = CliRunner().invoke(main, ["sensitivity", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--plan",
                                    str(base), "--units", "blocks.0,blockz.1", "--work", str(tmp_path / "w2")])
    assert bad.exit_code == 2 and "unknown unit 'blockz.1'" in bad.output


def test_float_units_are_bf16_on_openvino_and_drop_int8_only_rewrites(bench):
    """On openvino-cpu a unit kept float is bf16 (fp32 would make OpenVINO run the whole graph in f32), and the
    base default's smoothing and LayerNorm folding, which act on int8 layers only, are off there."""
    from vggt_deploy.tuning.units import unit_plan

    base = parse_plan(BASE.replace("onnxruntime-cpu", "openvino-cpu").replace(
        "activations: static}", "activations: static, smoothing: {alpha: 0.5}, fold_norm: true}"), "ov.yaml")
    plan = unit_plan(base, bench.all_units, {"blocks.1"}, bench.layer_names)
    resolved = plan.resolve(bench.layer_names)
    for unit in bench.all_units:
        for layer in unit.layers:
            spec = resolved[layer].spec
            if unit.name == "blocks.1":
                assert (spec.precision, spec.smoothing, spec.fold_norm) == ("int8", 0.5, True), layer
            else:
                assert (spec.precision, spec.smoothing, spec.fold_norm) == ("bf16", None, False), layer
    assert parse_plan(plan.text).rules == plan.rules


def test_a_plan_timed_on_openvino_is_read_for_openvino(tmp_path):
    from vggt_deploy.cli.sensitivity_cmds import _base_plan
    from vggt_deploy.paths import shipped_plan

    base = tmp_path / "base.yaml"
    base.write_text(BASE)
    assert _base_plan(base, None, "openvino").target == "openvino-cpu"
    assert _base_plan(base, None, "onnxruntime").target == "onnxruntime-cpu"
    assert _base_plan(base, "onnxruntime-cpu", "openvino").target == "onnxruntime-cpu"  # --target wins
    with pytest.raises(UserError, match="--runtime onnxruntime"):
        _base_plan(shipped_plan("mixed-dynamic"), None, "openvino")  # dynamic activations: ONNX Runtime only


def test_the_nothing_quantized_variant_is_stored_as_its_target_runs_float(bench, tiny_model_dir, tiny_data, tmp_path):
    """On openvino-cpu the float reference is the all-bf16 plan's file (16-bit weights), so a unit's size saving
    compares files stored alike; on ONNX Runtime it is the FP32 file itself."""
    assert bench.build(frozenset()) == bench.fp32_path
    ov = Workbench(tiny_model_dir, parse_plan(BASE.replace("onnxruntime-cpu", "openvino-cpu"), "ov.yaml"),
                   tmp_path / "ov", data_dir=tiny_data, cache_dir=tmp_path / "cache")
    float_file = ov.build(frozenset())
    assert float_file != ov.fp32_path
    assert float_file.stat().st_size < 0.85 * ov.fp32_path.stat().st_size  # weights halve; the graph stays
