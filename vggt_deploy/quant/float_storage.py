"""16-bit storage of float weights, for runtimes that compute those layers in 16 bits anyway.

On the `openvino-cpu` target a layer the plan marks `bf16` runs in bf16 (OpenVINO's CPU plugin,
INFERENCE_PRECISION_HINT bf16), so keeping its weights as float32 in the file only costs size.
They are stored as float16 initializers followed by a Cast to float32: the graph's contract is
unchanged (ONNX Runtime runs it as before), OpenVINO folds the Cast at compile time, and the
file shrinks by half for those weights. float16 keeps 11 mantissa bits, more than bf16's 8, so
nothing the bf16 kernels see is lost (weights beyond float16's range are left in float32).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)


def store_weights_fp16(model: onnx.ModelProto, weights: set[str]) -> int:
    """Store the float32 initializers named in `weights` as float16 + Cast; returns the bytes saved.

    An initializer is left alone when it is not float32, when its values do not fit float16, or
    when it is also a graph input or output.
    """
    graph = model.graph
    protected = {i.name for i in graph.input} | {o.name for o in graph.output}
    casts, saved = [], 0
    for init in list(graph.initializer):
        if init.name not in weights or init.name in protected or init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size and float(np.abs(values).max()) > FP16_MAX:
            continue
        half = numpy_helper.from_array(values.astype(np.float16), name=f"{init.name}.fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=f"{init.name}.cast_fp32"))
        saved += values.nbytes // 2
    for i, node in enumerate(casts):  # before every consumer: initializers are ready at the start
        graph.node.insert(i, node)
    return saved
