"""Shared tiny fixtures: a 2-block model on 32x32 input and a few synthetic scenes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vggt_deploy.data.coco import write_split
from vggt_deploy.model.config import get_config
from vggt_deploy.model.io import save_model
from vggt_deploy.model.vggt import create_model
from vggt_deploy.train.loop import default_tokenizer


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Eight eval-split scenes written as a COCO folder."""
    return write_split(tmp_path_factory.mktemp("data") / "eval8", "eval", 8, progress=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained vggt_tiny saved as a model folder."""
    torch.manual_seed(0)
    tokenizer = default_tokenizer()
    cfg = get_config("vggt_tiny", vocab_size=len(tokenizer))
    return save_model(create_model(cfg).eval(), tokenizer, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory):
    """The tiny model exported to FP32 ONNX (once per session), with its check and calibration inputs."""
    from vggt_deploy.compile import export_from_model

    out = tmp_path_factory.mktemp("export")
    return export_from_model(tiny_model_dir, out)


@pytest.fixture()
def tiny_plan_text():
    """A mixed plan that fits the 2-block tiny model."""
    return """\
version: 1
target: onnxruntime-cpu
calibration: {method: minmax, images: calib_data, num_images: 6}
default: {precision: int8, weight_granularity: per-channel, activations: static}
rules:
  - match: "blocks.1.*"
    weight_granularity: per-tensor
  - match: "grounding.*"
    precision: fp32
  - match: "heads.*"
    precision: fp32
"""
