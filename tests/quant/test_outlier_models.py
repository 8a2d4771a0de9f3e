"""Quantization on ViTs with the outliers of real pretrained transformers (`outlier_vit.OutlierViT`).

Massive activations on a register token carry the output (they hold an attention sink): a 99.99th
percentile range clips them and the outputs collapse, minmax keeps them. LayerNorm outlier channels
are too common for the percentile to clip. The last test pins the plan's default calibration method.
bench/outlier_models.py measures every method on the same models.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from outlier_vit import (
    OUTPUTS,
    VARIANTS,
    activation_stats,
    compare,
    export_outlier_vit,
    load_inputs,
    make_images,
    pearson_per_image,
    plan_text,
    quantize_ort_reference,
    quantize_with_library,
    run_model,
)

from vggt_deploy.graph.layers import find_layers

MASSIVE = ("massive-tokens", "both")
LN = ("ln-outliers", "both")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """32 calibration and 16 held-out images, each variant exported, and its FP32 outputs."""
    root = tmp_path_factory.mktemp("outlier_vit")
    calib, held = root / "calib", root / "held"
    make_images(calib, 32, 64, seed=0)
    make_images(held, 16, 64, seed=1)
    inputs = load_inputs(held)
    models = {v: export_outlier_vit(root / v / "model.onnx", seed=0, size=64, variant=v) for v in VARIANTS}
    fp32 = {v: run_model(path, inputs) for v, path in models.items()}
    return {"root": root, "calib": calib, "inputs": inputs, "models": models, "fp32": fp32}


def _library(setup, variant: str, name: str, method: str | None, percentile: float = 99.99,
             smoothing: float | None = None, fold_norm: bool = False) -> dict:
    qdq = quantize_with_library(setup["models"][variant], setup["root"] / variant / name,
                                plan_text(setup["calib"], method, percentile, smoothing=smoothing, fold_norm=fold_norm))
    return compare(setup["fp32"][variant], run_model(qdq, setup["inputs"]))


def _worst(result: dict) -> float:
    return min(result[name]["worst_r"] for name in OUTPUTS)


def test_layers_are_named_by_module_path(setup):
    names = [layer.name for layer in find_layers(onnx.load(setup["models"]["both"]))]
    for name in ("patch_embed.proj", "blocks.0.attn.q", "blocks.3.attn.proj", "blocks.1.mlp.fc1",
                 "blocks.2.mlp.fc2", "head", "embed_head"):
        assert name in names


@pytest.mark.parametrize("variant", VARIANTS)
def test_outlier_statistics_are_present_and_realistic(setup, variant):
    stats = activation_stats(variant, setup["inputs"])
    if variant in LN:  # every LayerNorm has channels far above its median channel
        assert stats["ln_channel_ratio_min"] >= 30, stats
    if variant in MASSIVE:  # a few residual values hundreds of times the median, not more
        assert 100 <= stats["massive_ratio"] <= 1000, stats
    else:
        assert stats["massive_ratio"] < 30, stats


@pytest.mark.parametrize("variant", MASSIVE)
def test_percentile_9999_collapses_on_massive_activations(setup, variant):
    """The documented failure: the massive values are ~0.003% of their tensor, the range clips them."""
    result = _library(setup, variant, "percentile", "percentile", 99.99)
    assert _worst(result) < 0.9, result


def test_percentile_9999_keeps_layernorm_outlier_channels(setup):
    """3 of 128 channels on every token are 2.3% of the values: far more than a 99.99th percentile cuts."""
    result = _library(setup, "ln-outliers", "percentile", "percentile", 99.99)
    assert _worst(result) >= 0.99, result


@pytest.mark.parametrize("variant", VARIANTS)
def test_minmax_keeps_outputs(setup, variant):
    result = _library(setup, variant, "minmax", "minmax")
    assert _worst(result) >= 0.99, result


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_dynamic_reference(setup, variant):
    """Sanity reference: ONNX Runtime's quantize_dynamic (ranges per run) keeps the outputs."""
    qdq = quantize_ort_reference(setup["models"][variant], setup["root"] / variant / "dynamic.onnx", "dynamic")
    result = compare(setup["fp32"][variant], run_model(qdq, setup["inputs"]))
    assert np.isfinite(_worst(result)) and _worst(result) >= 0.9, result


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_default_method_keeps_outputs(setup, variant):
    """A plan without `method:` (the plan's default calibration) keeps every output of every variant."""
    result = _library(setup, variant, "default", None)
    for name in OUTPUTS:
        assert result[name]["worst_r"] >= 0.99, (name, result)


def test_smoothing_helps_on_layernorm_outlier_channels(setup):
    """SmoothQuant moves LayerNorm-output outlier channels into the weights: the remaining error of the
    worst image falls (measured 3x on the embedding), on top of the default calibration."""
    plain = _library(setup, "ln-outliers", "auto", "auto")
    smoothed = _library(setup, "ln-outliers", "auto-smooth", "auto", smoothing=0.5)
    assert _worst(smoothed) >= 0.99
    for name in OUTPUTS:
        assert 1 - smoothed[name]["worst_r"] < 0.8 * (1 - plain[name]["worst_r"]), (name, plain, smoothed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_norm_folding_is_safe_on_outlier_models(setup, variant):
    """`fold_norm` on LayerNorms whose gamma carries 50-100x outlier channels, and on massive tokens: the
    guard folds only where the estimated int8 error allows, so the worst image stays as good as without it."""
    plain = _library(setup, variant, "default", None)
    folded = _library(setup, variant, "fold", None, fold_norm=True)
    report = json.loads((setup["root"] / variant / "fold" / "report.json").read_text())["norm_folding"]
    print(variant, {"folded": len(report["folded"]), "skipped": [r["reason"][:60] for r in report["skipped"]]})
    assert report["folded"] or report["skipped"]  # every LayerNorm was considered
    for name in OUTPUTS:
        assert folded[name]["worst_r"] >= 0.99, (name, folded)
        assert 1 - folded[name]["worst_r"] <= 1.5 * (1 - plain[name]["worst_r"]) + 1e-3, (name, plain, folded)


@pytest.mark.parametrize("variant", MASSIVE)
def test_openvino_lowering_is_safe_on_outlier_models(setup, variant):
    """OpenVINO's lowering (on by default: zero points folded, then the exact rewrites, here q/k/v fused and
    the patch embedding's transpose moved) on a QDQ model whose ranges hold massive activations (a huge fc2
    input range, zero points far from 128). The grid is the same, so only float rounding differs: as much as
    two runtimes differ on one file. Lowered and as exported, OpenVINO gives the same accuracy against FP32,
    and the two agree with each other on every image."""
    pytest.importorskip("openvino")
    from vggt_deploy.backends.openvino.runner import OvRunner

    qdq = quantize_with_library(setup["models"][variant], setup["root"] / variant / "fold",
                                plan_text(setup["calib"], None))
    inputs, outs = setup["inputs"], {}
    for fold in (True, False):
        with OvRunner(qdq, precision="f32", fold_zero_points=fold, rewrite_graph=fold) as runner:
            runs = [runner.infer({"images": inputs[i : i + 1]}) for i in range(len(inputs))]
            assert (runner.fold_report is not None and runner.fold_report.folded >= 8) == fold
            rewrites = runner.rewrite_report
            assert (rewrites is not None and rewrites.fused_matmuls >= 2 and rewrites.conv_tokens == 1) == fold
        outs[fold] = {name: np.concatenate([r[name] for r in runs]) for name in OUTPUTS}
    folded, kept = (compare(setup["fp32"][variant], outs[f]) for f in (True, False))
    for name in OUTPUTS:
        assert folded[name]["worst_r"] >= kept[name]["worst_r"] - 1e-3, (name, folded, kept)
        assert pearson_per_image(outs[False][name], outs[True][name]).min() >= 0.999, name
    assert _worst(folded) >= 0.99, folded
