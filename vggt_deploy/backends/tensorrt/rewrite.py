"""ONNX rewrites that express precision in the graph, for strongly typed TensorRT (11.x).

`to_fp16(model, nodes)` turns each listed MatMul/Gemm/Conv into an fp16 island:
its weight (and bias) initializers become fp16, a Cast to fp16 feeds its
activation input and a Cast back to fp32 follows its output. Everything else
keeps its type, so the network's precision is exactly what the plan says.
ONNX Runtime runs the result too, which is how the rewrite is checked here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_OPS = ("MatMul", "Gemm", "Conv")


def to_fp16(model: onnx.ModelProto, nodes: set[str] | list[str]) -> onnx.ModelProto:
    """A copy of `model` with the named nodes computing in fp16 (casts at their boundary)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(nodes)
    inits = {t.name: t for t in out.graph.initializer}
    new_nodes = []
    converted: dict[str, str] = {}
    for node in out.graph.node:
        if node.name not in wanted or node.op_type not in FP16_OPS:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name:
                continue
            if name in inits and inits[name].data_type == TensorProto.FLOAT:
                if name not in converted:
                    half = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), f"{name}_fp16")
                    out.graph.initializer.append(half)
                    converted[name] = half.name
                node.input[i] = converted[name]
            elif name not in inits:
                cast_out = f"{node.name}_in{i}_fp16"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], name=f"{node.name}_cast_in{i}",
                                                  to=TensorProto.FLOAT16))
                node.input[i] = cast_out
        original = node.output[0]
        node.output[0] = f"{original}_fp16"
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [node.output[0]], [original], name=f"{node.name}_cast_out",
                                          to=TensorProto.FLOAT))
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    del out.graph.value_info[:]  # stale types; TensorRT and ORT re-infer them
    return out
