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
