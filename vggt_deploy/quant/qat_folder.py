"""The learned quantizers of a QAT model folder: `qat_scales.safetensors` and the `qat` entry of config.json.

A QAT model folder is an ordinary model folder (its weights load with `load_model`, strict)
plus, per quantized ONNX activation tensor, the learned scale, zero point and integer
levels. `config.json` records the plan it was trained for, that file's sha256 and the run.
`export --model DIR --plan PLAN` reads them back as ranges, so the QDQ export carries the
learned scales and calibrates nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch

from vggt_deploy.errors import UserError
from vggt_deploy.model.io import load_tensors, save_tensors
from vggt_deploy.quant.fake_quant import QatModules, activation_inputs
from vggt_deploy.quant.resolved import ResolvedPlan

SCALES = "qat_scales.safetensors"


def plan_signature(resolved: ResolvedPlan) -> dict:
    """What a QAT model was trained for: target and every layer's precision and activation mode."""
    return {"target": resolved.plan.target,
            "layers": {l.name: [resolved.precision(l), resolved.mode(l), resolved.spec(l).weight_granularity]
                       for l in resolved.layers}}


def save_qat_scales(out_dir: Path, qat: QatModules) -> str:
    """Write the learned quantizers, one row (scale, zero point, qmin, qmax) per quantizer, keyed by the
    layer inputs it quantizes (``learned/blocks.0.attn.q:0,blocks.0.attn.k:0``): layer names are stable
    across exports, ONNX tensor names are not (the simplifier folds differently once weights change).
    Returns the file's sha256."""
    tensors = {}
    for i, readers in enumerate(qat.readers):
        q = qat.act[f"t{i}"]
        tensors["learned/" + ",".join(readers)] = torch.tensor([float(q.log_scale.detach().exp()),
                                                               float(q.zero_point), q.qmin, q.qmax])
    return save_tensors(tensors, out_dir / SCALES)


def learned_ranges(model_dir: Path, resolved: ResolvedPlan, fp32: onnx.ModelProto) -> dict[str, tuple[float, float]] | None:
    """{ONNX tensor of `fp32`: (lo, hi)} of a QAT model folder (None for an ordinary model folder).

    Refused when the plan differs from the one the model was trained for: its layers would
    be quantized in a way training never saw.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    qat = config.get("qat")
    if not qat:
        return None
    if qat.get("plan_signature") != json.loads(json.dumps(plan_signature(resolved))):
        raise UserError(f"{model_dir}: this QAT model was trained for plan {qat.get('plan', '?')}; export it with "
                        f"that plan (or a plan that quantizes every layer the same way), not {resolved.plan.source}")
    scales = load_tensors(Path(model_dir) / SCALES, qat.get("scales_sha256"))
    nodes = {layer.name: layer.node for layer in resolved.layers}
    out = {}
    for key, v in scales.items():
        scale, zero, qmin, qmax = (float(x) for x in v)
        for reader in key.removeprefix("learned/").split(","):
            layer, index = reader.rsplit(":", 1)
            if layer not in nodes:
                raise UserError(f"{model_dir / SCALES}: layer {layer!r} is not in the exported graph")
            out[activation_inputs(fp32, nodes[layer])[int(index)]] = ((qmin - zero) * scale, (qmax - zero) * scale)
    return out
