import numpy as np
import pytest

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.torch.runner import TorchRunner
from vggt_deploy.errors import UserError


def _feeds(tiny_export, batch=2):
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    images = np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return {"images": images, "query_embeds": queries}


def test_ort_and_torch_runners_agree(tiny_export, tiny_model_dir):
    feeds = _feeds(tiny_export)
    with OrtRunner(tiny_export.fp32) as ort, TorchRunner(tiny_model_dir) as torch_runner:
        a, b = ort.infer(feeds), torch_runner.infer(feeds)
    assert set(a) == set(b) == {"boxes", "logits", "class_logits"}
    for key in a:
        assert np.abs(a[key] - b[key]).max() < 1e-4, key


def test_state_is_checked(tiny_export):
    runner = OrtRunner(tiny_export.fp32)
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(_feeds(tiny_export))
    runner.activate()
    with pytest.raises(RuntimeError, match="already active"):
        runner.activate()
    runner.close()
    assert not runner.active


def test_inputs_are_checked_before_running(tiny_export, tiny_model_dir):
    feeds = _feeds(tiny_export)
    for runner in (OrtRunner(tiny_export.fp32, name="ort"), TorchRunner(tiny_model_dir, name="torch")):
        with runner:
            with pytest.raises(UserError, match="'images' has shape"):
                runner.infer({**feeds, "images": feeds["images"][:, :, :16]})
            with pytest.raises(UserError, match="'images' is float64"):
                runner.infer({**feeds, "images": feeds["images"].astype(np.float64)})
            with pytest.raises(UserError, match="do not match"):
                runner.infer({"images": feeds["images"]})


def test_torch_dynamic_int8_peer_runs(tiny_export, tiny_model_dir):
    feeds = _feeds(tiny_export)
    with TorchRunner(tiny_model_dir, dynamic_int8=True) as runner:
        out = runner.infer(feeds)
    assert out["boxes"].shape == (2, 4, 4)


def test_build_ort_writes_an_optimized_model_that_agrees(tiny_export, tmp_path):
    import json

    from click.testing import CliRunner

    from vggt_deploy.cli import main

    for fmt, name in (("onnx", "opt.onnx"), ("ort", "opt.ort")):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["build-ort", "--onnx", str(tiny_export.fp32), "-o", str(out), "--format", fmt])
        assert result.exit_code == 0, result.output
        settings = json.loads((tmp_path / f"{name}.json").read_text())
        assert settings["format"] == fmt and settings["portable"]
        feeds = _feeds(tiny_export)
        with OrtRunner(out) as built, OrtRunner(tiny_export.fp32) as plain:
            assert np.abs(built.infer(feeds)["boxes"] - plain.infer(feeds)["boxes"]).max() < 1e-4
