"""GFLOPs per image counted from an ONNX graph (MatMul, Gemm, Conv; 2 FLOPs per MAC).

Shapes come from ONNX shape inference with the batch fixed to 1 and every other
dynamic dimension fixed to the values given (e.g. the number of queries).
Elementwise ops, softmax and norms are left out: on this model they are a few
percent of the total and no int8 kernel speeds them up.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference


def _fix_dims(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for inp in fixed.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param:
                value = dims.get(d.dim_param, 1)
                d.Clear()
                d.dim_value = value
    return shape_inference.infer_shapes(fixed, data_prop=True)


def count_gflops(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> float:
    """GFLOPs of one forward pass with batch 1 (other dynamic dims from `dims`)."""
    inferred = _fix_dims(model, dims or {})
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type == "MatMul":
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if a and b and out and all(out):
                macs += int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            if a and out and all(out):
                macs += int(np.prod(out)) * (a[0] if trans_a else a[-1])
        elif node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and out and all(out):
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return 2 * macs / 1e9
