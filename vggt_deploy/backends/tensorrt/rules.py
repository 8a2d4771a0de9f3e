"""TensorRT rules for explicitly quantized (QDQ) ONNX graphs.

Checked (from TensorRT's "Working with Quantized Types" developer guide and the
ONNX-TensorRT operator support list for 10.x):

- the opset is one TensorRT 10.3's ONNX parser reads (<= 20), and every op is in its operator list;
- QuantizeLinear/DequantizeLinear use int8 (TensorRT has no uint8 or int16 QDQ);
- every zero point is 0 (TensorRT quantization is symmetric);
- QDQ pairs feed MatMul, Gemm or Conv, where TensorRT fuses them into int8 kernels;
- per-channel weight scales run along the output-channel axis of the weight
  (Conv: 0; MatMul B [K, N]: 1; Gemm: 0 with transB=1, else 1).

`validate_tensorrt` returns every violation as a line naming the node, so a
user sees them all at once.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

MAX_OPSET = 20
FUSING_OPS = ("MatMul", "Gemm", "Conv")
# Operators of onnx-tensorrt's docs/operators.md for the 10.3 release (JetPack 6) that the graphs this
# project exports can contain, each listed there as supported. An op outside this set is reported rather
# than assumed parseable; widen the set only after checking that table. Not listed on purpose: If, Loop,
# Scan and the sequence ops (refused or unsupported), NonZero (data-dependent shapes).
TENSORRT_10_3_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "DequantizeLinear", "Div", "Einsum", "Equal", "Erf", "Exp",
    "Expand", "Flatten", "Floor", "Gather", "GatherElements", "Gelu", "Gemm", "GlobalAveragePool", "Greater",
    "HardSigmoid", "Identity", "LayerNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max", "MaxPool", "Min",
    "Mul", "Neg", "Not", "Pad", "Pow", "QuantizeLinear", "Range", "Reciprocal", "ReduceMax", "ReduceMean",
    "ReduceL1", "ReduceL2", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ScatterND", "Shape", "Sigmoid", "Sign", "Sin", "Slice",
    "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def validate_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Every TensorRT-rule violation in a QDQ model (empty list: it passes)."""
    problems: list[str] = []
    opset = _opset(model)
    if opset > MAX_OPSET:
        problems.append(f"opset {opset}: TensorRT 10.3 parses opsets up to {MAX_OPSET}")
    for op in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - TENSORRT_10_3_OPS):
        problems.append(f"op {op}: not in the operators TensorRT 10.3's ONNX parser supports (TENSORRT_10_3_OPS)")
    for op in sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}):
        if not op.endswith(("QuantizeLinear", "DequantizeLinear")):  # QDQ domains are reported per node below
            problems.append(f"op {op}: a custom-domain op TensorRT's ONNX parser does not read")
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
              for n in model.graph.node if n.op_type == "Constant"}
    tensors = {**consts, **inits}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: domain {node.domain!r} (TensorRT reads only standard-domain QDQ)")
        zp = tensors.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None:
            if zp.data_type != onnx.TensorProto.INT8:
                problems.append(f"{label}: zero point type {onnx.TensorProto.DataType.Name(zp.data_type)} (TensorRT needs INT8)")
            if numpy_helper.to_array(zp).any():
                problems.append(f"{label}: non-zero zero point (TensorRT quantization is symmetric)")
        elif len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":
                problems.append(f"{label}: no zero point, so it quantizes to uint8 (TensorRT needs INT8)")
        if node.op_type == "DequantizeLinear":
            problems.extend(_check_dq_consumers(node, consumers, tensors, label))
    return problems


def _check_dq_consumers(node, consumers, tensors, label) -> list[str]:
    problems = []
    users = consumers.get(node.output[0], [])
    for user in users:
        if user.op_type not in FUSING_OPS:
            problems.append(f"{label}: feeds {user.op_type} {user.name}, where TensorRT does not fuse QDQ "
                            "(quantize only MatMul/Gemm/Conv inputs)")
    scale = tensors.get(node.input[1])
    weight = tensors.get(node.input[0])
    if scale is None or weight is None or len(scale.dims) == 0 or (len(scale.dims) == 1 and scale.dims[0] == 1):
        return problems
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    rank = len(weight.dims)
    axis = axis % rank if rank else axis
    for user in users:
        if user.op_type == "Conv":
            want = 0
        elif user.op_type == "MatMul":
            want = rank - 1
        elif user.op_type == "Gemm":
            want = 0 if next((a.i for a in user.attribute if a.name == "transB"), 0) else 1
        else:
            continue
        if user.input[1] == node.output[0] and axis != want:
            problems.append(f"{label}: per-channel axis {axis} but {user.op_type} {user.name} needs axis {want} "
                            "(the weight's output channels)")
    return problems
