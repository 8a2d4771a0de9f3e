import json

import numpy as np
import onnx
import pytest

from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import find_layers
from vggt_deploy.graph.onnx_io import get_metadata, load_onnx


def test_fp32_export_matches_pytorch_and_carries_metadata(tiny_export, tiny_model_dir):
    info = tiny_export.export_info
    assert info["max_abs_diff_vs_torch"]["boxes"] <= 1e-4
    model = onnx.load(str(tiny_export.fp32))
    meta = get_metadata(model)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert meta["vggt.config_hash"] == config["config_hash"]
    assert json.loads(meta["vggt.preprocess"])["size"] == 32
    assert [o.name for o in model.graph.output] == ["boxes", "logits", "class_logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_module_paths_survive_simplification(tiny_export):
    names = {layer.name for layer in find_layers(onnx.load(str(tiny_export.fp32)))}
    for expected in ("patch_embed.proj", "blocks.0.attn.q", "blocks.1.mlp.fc2", "blocks.0.attn.qk",
                     "grounding.1.token_to_image.v", "heads.cls.fc"):
        assert expected in names


def test_dynamic_batch_runs_in_onnxruntime(tiny_export):
    from vggt_deploy.backends.onnxruntime.session import make_session

    session = make_session(tiny_export.fp32)
    queries = np.load(tiny_export.fp32.parent / "queries.npy")
    for batch in (1, 3):
        boxes, logits, cls = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32), "query_embeds": queries})
        assert boxes.shape == (batch, 4, 4) and logits.shape == (batch, 4, len(queries)) and cls.shape[0] == batch


def test_broken_onnx_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="bad.onnx: not a valid ONNX model"):
        load_onnx(bad)
    with pytest.raises(UserError, match="ONNX file not found"):
        load_onnx(tmp_path / "none.onnx")
