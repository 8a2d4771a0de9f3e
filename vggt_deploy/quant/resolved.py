"""A plan resolved against one graph: the typed ``{layer: spec}`` map every later stage receives.

`QdqPlan` is what the user wrote; `ResolvedPlan` is what it means for a given
FP32 graph: each quantizable layer (MatMul/Gemm/Conv, named by module path),
its `LayerSpec`, the rule that set it, and how it will be quantized (static
QDQ, dynamic, weight-only or float). The plan is resolved once per graph, at
the entry of a stage (`export`, `plan show`, `build-trt --plan`), and the
result is passed on, so the quantizer, the report and the TensorRT builder
all read the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import Layer, find_layers
from vggt_deploy.quant.plan import LayerSpec, QdqPlan, Resolved

MODES = ("static", "dynamic", "weight-only", "float")


@dataclass(frozen=True)
class ResolvedPlan:
    """Every quantizable layer of one graph with its spec, in graph order."""

    plan: QdqPlan
    layers: tuple[Layer, ...]
    specs: Mapping[str, Resolved]

    def spec(self, layer: Layer) -> LayerSpec:
        return self.specs[layer.name].spec

    def rule_text(self, layer: Layer) -> str:
        """'default' or 'RULE_INDEX: PATTERN' for the rule that set this layer."""
        rule = self.specs[layer.name].rule
        return "default" if rule is None else f"{rule}: {self.plan.rules[rule].match}"

    def mode(self, layer: Layer) -> str:
        """How the layer is quantized: static | dynamic | weight-only | float.

        Activation-by-activation matmuls (Q·Kᵀ, attention·V) stay float unless their rule sets
        `attention_matmuls`; dynamic activations apply to MatMuls with a weight only.
        """
        spec = self.spec(layer)
        if not spec.quantized or (layer.weight is None and not spec.attention_matmuls):
            return "float"
        if spec.activations == "dynamic":
            return "dynamic" if layer.weight is not None and layer.op_type == "MatMul" else "float"
        if spec.activations == "off":
            return "weight-only"
        return "static"

    def partition(self) -> tuple[list[Layer], list[Layer], list[Layer]]:
        """(static QDQ, dynamic, weight-only) layers."""
        by_mode: dict[str, list[Layer]] = {m: [] for m in MODES}
        for layer in self.layers:
            by_mode[self.mode(layer)].append(layer)
        return by_mode["static"], by_mode["dynamic"], by_mode["weight-only"]

    def precision(self, layer: Layer) -> str:
        """The precision the layer really runs in (a quantized spec on a float-mode layer is fp32)."""
        spec = self.spec(layer)
        return "fp32" if spec.quantized and self.mode(layer) == "float" else spec.precision

    def requested_precisions(self) -> dict[str, str]:
        """Layer name -> the precision the plan asks for (recorded in the QDQ model's metadata; the
        TensorRT builder pins fp32/fp16 layers from it)."""
        return {layer.name: self.spec(layer).precision for layer in self.layers}

    def check_buildable(self) -> None:
        """Refuse what this release cannot build rather than quietly running it in another precision."""
        for layer in self.layers:
            spec, rule = self.spec(layer), self.specs[layer.name].rule
            where = f"rule {rule} ({self.plan.rules[rule].match!r})" if rule is not None else "default"
            if spec.precision == "int16":
                raise UserError(f"{self.plan.source}: {where} sets int16 for {layer.name}; int16 QDQ is not "
                                "implemented in this release (use int8 or fp32)")
            weight_only = spec.quantized and spec.activations == "off"
            if weight_only and (layer.op_type != "MatMul" or layer.weight is None):
                if layer.weight is None and not spec.attention_matmuls:
                    continue  # activation-only matmuls are float unless attention_matmuls is set
                raise UserError(f"{self.plan.source}: {where}: weight-only {spec.precision} supports MatMul layers "
                                f"with weights; {layer.name} is {layer.op_type} (give it its own rule)")
            if spec.activations == "dynamic" and spec.quantized and layer.weight is not None \
                    and layer.op_type != "MatMul":
                raise UserError(f"{self.plan.source}: {where}: dynamic activations support MatMul layers; "
                                f"{layer.name} is {layer.op_type} (give it a rule with activations: static)")


def resolve_plan(plan: QdqPlan, graph: onnx.ModelProto | list[Layer]) -> ResolvedPlan:
    """Resolve `plan` on a graph (or its layers); a rule that matches nothing and an unbuildable spec are errors."""
    layers = find_layers(graph) if isinstance(graph, onnx.ModelProto) else list(graph)
    resolved = ResolvedPlan(plan, tuple(layers), plan.resolve([layer.name for layer in layers]))
    resolved.check_buildable()
    return resolved
