"""Lookups and clean-up over one ONNX graph, shared by the OpenVINO lowering passes (lowering.py, rewrites.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Producer, consumer and initializer lookups over one ONNX graph, kept current by the passes that edit it."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.relink()
        self.outputs = {o.name for o in graph.output}
        self.names = set(self.inits) | set(self.producer) | {i.name for i in graph.input}

    def relink(self) -> None:
        """Recompute producers and consumers from the graph's nodes, after a pass rewired them."""
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def sole_user(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when exactly one does and it is not a graph output."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}{i}"
        self.names.add(name)
        return name

    def add_init(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name


def norm_affine(g: GraphIndex, norm: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """A LayerNormalization's constant affine (scale, bias), the bias zeros where the node has none; None
    unless the scale is a 1-D constant and the bias a constant of its shape."""
    scale = g.const(norm.input[1]) if len(norm.input) > 1 else None
    if scale is None or scale.ndim != 1:
        return None
    bias = g.const(norm.input[2]) if len(norm.input) > 2 and norm.input[2] else np.zeros_like(scale)
    return (scale, bias) if bias is not None and bias.shape == scale.shape else None


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of `node`'s attribute `name`, or `default` when it has none."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers nothing reads any more (graph outputs count as read).

    Left alone when a node carries a subgraph (If, Loop, Scan), whose body may read outer names.
    """
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out and out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)
