"""How `auto` calibration cuts a large model's activations into passes that fit in memory.

A model with external weights (VGGT-1B) has activations far larger than its calibration can hold
at once: one 224 px sequence's activations and their samples would take 16 GB beside the session's
5. `auto_ranges` therefore reads the tensors it calibrates in passes over the images, each pass as
many tensors as fit a byte budget per image. Sizes come from the shapes the exporter recorded in the
graph, symbolic dimensions included.
"""

from __future__ import annotations

import ast
import operator

import numpy as np
import onnx

PASS_BYTES = 2 << 30  # activation bytes read per image and pass when calibrating a model with external weights


def pass_groups(model: onnx.ModelProto, tensors: list[str], feed: np.ndarray, budget: int) -> list[list[str]]:
    """`tensors` in order, cut into groups whose float32 values for one `feed` should take at most
    `budget` bytes (a tensor larger than that is a group of its own).

    Sizes come from the graph's recorded shapes (`value_info`); a symbolic dimension ("frames",
    "261*frames") is evaluated with every symbol set to the feed's leading dimension, and a tensor
    without a usable shape counts as `budget` / 16.
    """
    graph = model.graph
    shapes = {v.name: v.type.tensor_type.shape for v in (*graph.input, *graph.value_info, *graph.output)}
    lead = int(feed.shape[0]) if feed.ndim else 1
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0
    for name in tensors:
        size = _elements(shapes.get(name), lead)
        size = max(1, budget // 16) if size is None else 4 * size
        if current and total + size > budget:
            groups.append(current)
            current, total = [], 0
        current.append(name)
        total += size
    return groups + ([current] if current else [])


_DIM_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _elements(shape, lead: int) -> int | None:
    """Elements of a tensor of `shape` (a TensorShapeProto), symbols set to `lead`; None when unknown."""
    if shape is None or not shape.dim:
        return None
    count = 1
    for d in shape.dim:
        value = d.dim_value if d.HasField("dim_value") else _symbolic(d.dim_param, lead) if d.dim_param else None
        if value is None or value < 0:
            return None
        count *= value
    return count


def _symbolic(expr: str, lead: int) -> int | None:
    """An exporter's symbolic dimension ("frames", "261*frames", "frames - 1") with symbols = `lead`."""
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return lead
        if isinstance(node, ast.BinOp) and type(node.op) in _DIM_OPS:
            return _DIM_OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(expr)

    try:
        return value(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
