"""Quantizable layers of an ONNX graph, named the way users name PyTorch modules.

A layer is a MatMul, Gemm or Conv node. Its name is the module path the
dynamo exporter recorded (``blocks.3.attn.q``); activation-by-activation
matmuls inside attention modules are ``<module>.qk`` (Q·Kᵀ) and
``<module>.av`` (attention·V). Nodes without that metadata (a model exported
elsewhere, or a node an optimizer fused) fall back to the module path in the
weight's initializer name (``heads.cls.fc.weight``) and then to the node name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import onnx

from vggt_deploy.graph.onnx_io import SCOPES_KEY

QUANT_OPS = ("MatMul", "Gemm", "Conv")
# Modules whose two activation matmuls are Q·Kᵀ then attention·V.
ATTENTION_MODULES = ("attn", "self_attn", "token_to_image", "image_to_token")


@dataclass(frozen=True)
class Layer:
    """One quantizable node."""

    name: str  # the name plans match
    node: str  # ONNX node name
    op_type: str
    weight: str | None  # initializer input (None: both inputs are activations)

    @property
    def is_attention_matmul(self) -> bool:
        return self.weight is None and self.name.rsplit(".", 1)[-1] in ("qk", "av")


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                value = prop.value.strip("[]").replace("'", "").split(", ")
            return [s for s in value if s]
    return []


def _module_of(node: onnx.NodeProto) -> str | None:
    """Deepest module path in the node's scopes (the last scope is the op itself)."""
    scopes = _scopes(node)
    return scopes[-2] if len(scopes) >= 2 else None


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """All quantizable layers in graph order, with unique names."""
    inits = {i.name for i in model.graph.initializer}
    # Constant nodes also hold weights after some simplifiers.
    inits |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    act_matmuls: dict[str, int] = defaultdict(int)
    layers: list[Layer] = []
    seen: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS:
            continue
        weight = next((i for i in node.input[1:2] if i in inits), None)
        module = _module_of(node)
        if weight is not None:
            name = module or (weight.rsplit(".", 1)[0] if weight.endswith(".weight") else node.name)
        elif module is not None:
            k = act_matmuls[module]
            act_matmuls[module] += 1
            if module.rsplit(".", 1)[-1] in ATTENTION_MODULES and k < 2:
                name = f"{module}.{('qk', 'av')[k]}"
            else:
                name = f"{module}.matmul" + (str(k) if k else "")
        else:
            name = node.name
        seen[name] += 1
        if seen[name] > 1:
            name = f"{name}#{seen[name] - 1}"
        layers.append(Layer(name=name, node=node.name, op_type=node.op_type, weight=weight))
    return layers
