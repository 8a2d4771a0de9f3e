"""Quantization-aware training: a few steps on the tiny model, then the export carries the learned scales."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from int8_quant import rewrite_plan

RULES = """\
  - match: "blocks.*"
    attention_matmuls: true
  - match: "heads.*"
    precision: fp32
"""


@pytest.fixture(scope="module")
def qat_run(tiny_model_dir, tmp_path_factory):
    from vggt_deploy.tuning.qat import QatConfig, run_qat

    out = tmp_path_factory.mktemp("qat") / "tiny_qat"
    plan = rewrite_plan(RULES, "onnxruntime-cpu", source="<tiny int8-attention>")
    cfg = QatConfig(steps=8, lr=1e-3, scale_lr=1e-2, batch_size=4, train_images=16, checkpoint_every=4, log_every=1,
                    bf16=False)
    summary = run_qat(tiny_model_dir, plan, cfg, out, eval_images=8)
    return out, plan, summary


def test_qat_writes_a_model_folder_and_the_loss_falls(qat_run, tiny_model_dir):
    from vggt_deploy.model.io import load_model

    out, _, summary = qat_run
    losses = [row["loss"] for row in summary["loss_log"]]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])
    config = json.loads((out / "config.json").read_text())
    assert config["qat"]["scales_sha256"] and config["qat"]["metrics"]["qat"]["map"] >= 0
    qat_model, original = load_model(out).model, load_model(tiny_model_dir).model  # strict loads
    for name, value in original.query_encoder.state_dict().items():  # frozen: the same queries as the original
        assert torch.equal(value, qat_model.query_encoder.state_dict()[name]), name
    assert not torch.equal(original.blocks[0].attn.q.weight, qat_model.blocks[0].attn.q.weight)
    assert (out / "qat_scales.safetensors").is_file() and "PTQ" in (out / "MODEL_CARD.md").read_text()
    assert not any(p.name.endswith(".qat-checkpoint") for p in out.parent.iterdir())  # removed after success


def test_export_uses_the_learned_scales_and_matches_fake_quant(qat_run, tmp_path):
    """ONNX Runtime on the QDQ export agrees with PyTorch fake quantization on the same inputs."""
    import onnxruntime as ort

    from vggt_deploy.compile import export_from_model
    from vggt_deploy.model.io import load_model
    from vggt_deploy.quant.fake_quant import attach_fake_quant
    from vggt_deploy.quant.qat_folder import learned_ranges
    from vggt_deploy.quant.resolved import resolve_plan

    out, plan, _ = qat_run
    exported = export_from_model(out, tmp_path / "export", plan)
    assert exported.report["calibration"]["method"].startswith("learned")
    fp32 = onnx.load(str(exported.fp32))
    resolved = resolve_plan(plan, fp32)
    ranges = learned_ranges(out, resolved, fp32)
    qdq = onnx.load(str(exported.qdq))
    scales = {n.input[0]: onnx.numpy_helper.to_array(next(i for i in qdq.graph.initializer if i.name == n.input[1]))
              for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, (lo, hi) in ranges.items():  # the QDQ scale of every learned tensor is the learned scale
        if tensor in scales:
            assert float(scales[tensor]) == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert any(t in scales for t in ranges)

    loaded = load_model(out)
    model = loaded.model.eval()
    attach_fake_quant(model, resolved, fp32, ranges)
    size = model.cfg.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    queries = np.load(exported.fp32.parent / "queries.npy")
    with torch.no_grad():
        ref = model(images, torch.from_numpy(queries))
    session = ort.InferenceSession(str(exported.qdq), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": images.numpy(), "query_embeds": queries})))
    boxes = ref[0].numpy()
    # Differences left: int32 bias rounding and float summation order (a rounding tie may flip a level).
    assert np.abs(got["boxes"] - boxes).max() < 0.02
    assert np.corrcoef(got["logits"].ravel(), ref[1].numpy().ravel())[0, 1] > 0.999


def test_export_refuses_another_plan(qat_run, tmp_path):
    from vggt_deploy.compile import export_from_model
    from vggt_deploy.errors import UserError

    out, _, _ = qat_run
    other = rewrite_plan(RULES.replace("attention_matmuls: true", "precision: fp32"), "onnxruntime-cpu")
    with pytest.raises(UserError, match="trained for plan"):
        export_from_model(out, tmp_path / "x", other)
    assert not (tmp_path / "x").exists()


def test_tensorrt_flavour_passes_the_rules(qat_run, tiny_model_dir, tmp_path):
    """A QAT model trained for the TensorRT flavour exports symmetric QDQ that passes the validator."""
    from vggt_deploy.tuning.qat import QatConfig, run_qat

    plan = rewrite_plan(RULES, "tensorrt")
    summary = run_qat(tiny_model_dir, plan, QatConfig(steps=2, batch_size=2, train_images=4, bf16=False),
                      tmp_path / "trt_qat", eval_images=4)
    assert summary["metrics"]["qat"]["map"] >= 0  # export_from_model ran the TensorRT-rule validator
