import json

import pytest
import torch

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import sha256_file
from vggt_deploy.model.io import load_model, save_model


def test_round_trip_gives_identical_outputs(tiny_model_dir, tmp_path):
    loaded = load_model(tiny_model_dir)
    meta = json.loads((tiny_model_dir / "config.json").read_text())
    assert meta["weights_sha256"] == sha256_file(tiny_model_dir / "model.safetensors")
    copy = save_model(loaded.model, loaded.tokenizer, tmp_path / "copy")
    again = load_model(copy)
    x = torch.randn(2, 3, 32, 32)
    q = torch.randn(3, loaded.model.cfg.ground_dim)
    with torch.no_grad():
        for a, b in zip(loaded.model(x, q), again.model(x, q)):
            assert torch.equal(a, b)


def _copy_dir(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_tampered_weights_fail_the_sha256_check(tiny_model_dir, tmp_path):
    bad = _copy_dir(tiny_model_dir, tmp_path / "bad")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model.safetensors: sha256 mismatch"):
        load_model(bad)


def test_missing_folder_and_broken_config_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        load_model(tmp_path / "nope")
    bad = _copy_dir(tiny_model_dir, tmp_path / "badcfg")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        load_model(bad)
