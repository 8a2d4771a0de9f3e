"""PyTorch VGGT -> FP32 ONNX with a fixed contract, checked against PyTorch.

Steps: trace with the dynamo exporter (dynamic batch and query count),
simplify with onnxslim while keeping each node's module path, write the
metadata every later step checks, verify with onnx.checker and ONNX Runtime
against PyTorch, and write atomically.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from vggt_deploy.graph.onnx_io import SCOPES_KEY, set_metadata
from vggt_deploy.model.io import LoadedModel
from vggt_deploy.model.layers import Attention
from vggt_deploy.model.vggt import OUTPUT_NAMES

OPSET = 18  # LayerNormalization needs 17+; TensorRT 10.3 (JetPack 6) and ONNX Runtime both parse 18
INPUT_NAMES = ("images", "query_embeds")


@dataclass
class ExportCheck:
    """How closely ONNX Runtime reproduces PyTorch on the check inputs."""

    max_abs_diff: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff["boxes"] <= self.tolerance


def model_metadata(loaded: LoadedModel, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata_props every exported file carries (DESIGN.md contract)."""
    cfg = loaded.model.cfg
    pp = cfg.preprocess
    meta = {
        "vggt.model": cfg.name,
        "vggt.config_hash": cfg.config_hash(),
        "vggt.weights_sha256": loaded.meta.get("weights_sha256", ""),
        "vggt.preprocess": json.dumps({"size": pp.size, "mean": list(pp.mean), "std": list(pp.std),
                                       "channel_order": "rgb", "layout": "NCHW"}),
        "vggt.inputs": json.dumps(list(INPUT_NAMES)),
        "vggt.outputs": json.dumps(list(OUTPUT_NAMES)),
        "vggt.num_grounding_tokens": str(cfg.num_grounding_tokens),
        "vggt.ground_dim": str(cfg.ground_dim),
        "vggt.embed_dim": str(cfg.embed_dim),
        "vggt.num_heads": str(cfg.num_heads),
    }
    return meta | (extra or {})


def trace_model(model: torch.nn.Module, images: torch.Tensor, queries: torch.Tensor) -> onnx.ModelProto:
    """The dynamo export of the VGGT contract (dynamic batch and query count), unsimplified."""
    batch, num_q = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("num_queries", min=1, max=4096)
    Attention.fused_attn = False  # every op visible to the quantizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (images, queries), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: num_q}),
        )
    return program.model_proto


def simplify_keeping_scopes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim drops node metadata; put each surviving node's module path back by node name."""
    import onnxslim

    scopes = {n.name: {p.key: p.value for p in n.metadata_props} for n in model.graph.node if n.metadata_props}
    slim = onnxslim.slim(model)
    for node in slim.graph.node:
        for key, value in scopes.get(node.name, {}).items():
            if key == SCOPES_KEY or key.startswith("pkg.torch.onnx"):
                node.metadata_props.add(key=key, value=value)
    return slim


def compare_with_torch(
    model: torch.nn.Module, onnx_model: onnx.ModelProto, images: np.ndarray, queries: np.ndarray, tolerance: float = 1e-4
) -> ExportCheck:
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs; max |difference| per output."""
    from vggt_deploy.backends.onnxruntime.session import make_session

    session = make_session(onnx_model.SerializeToString())
    ort_out = session.run(list(OUTPUT_NAMES), {"images": images, "query_embeds": queries})
    with torch.no_grad():
        torch_out = model(torch.from_numpy(images), torch.from_numpy(queries))
    diffs = {name: float(np.abs(a - b.numpy()).max()) for name, a, b in zip(OUTPUT_NAMES, ort_out, torch_out)}
    return ExportCheck(max_abs_diff=diffs, tolerance=tolerance)


def export_model(loaded: LoadedModel, images: np.ndarray, queries: np.ndarray) -> tuple[onnx.ModelProto, ExportCheck]:
    """Trace, simplify, annotate and check; returns the FP32 model and its check."""
    model = loaded.model.eval()
    traced = trace_model(model, torch.from_numpy(images), torch.from_numpy(queries))
    slim = simplify_keeping_scopes(traced)
    set_metadata(slim, model_metadata(loaded))
    try:
        onnx.checker.check_model(slim)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported model fails onnx.checker: {exc}") from exc
    check = compare_with_torch(model, slim, images, queries)
    if not check.ok:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch on boxes by {check.max_abs_diff['boxes']:.2e} "
                           f"(tolerance {check.tolerance:.0e})")
    return slim, check
