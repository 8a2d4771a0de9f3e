import numpy as np
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.backends.tensorrt.rules import validate_tensorrt


def _graph(zp_dtype=np.int8, zp_value=0, consumer="MatMul", axis=1, opset=18):
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q")
    w_scale = numpy_helper.from_array(np.full(3, 0.1, np.float32), "w_scale")
    w_zp = numpy_helper.from_array(np.zeros(3, np.int8), "w_zp")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "x_scale")
    zp = numpy_helper.from_array(np.array(zp_value, zp_dtype), "x_zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", axis=axis),
    ]
    if consumer == "MatMul":
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"))
    else:
        nodes += [helper.make_node("MatMul", ["x", "wd"], ["y0"], name="mm"),
                  helper.make_node("Add", ["xd", "x"], ["y1"], name="add"),
                  helper.make_node("Concat", ["y0", "y1"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[w, w_scale, w_zp, scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_clean_graph_passes():
    assert validate_tensorrt(_graph()) == []


def test_planted_violations_are_each_reported():
    assert any("non-zero zero point" in v for v in validate_tensorrt(_graph(zp_value=3)))
    assert any("zero point type UINT8" in v for v in validate_tensorrt(_graph(zp_dtype=np.uint8)))
    assert any("feeds Add add" in v for v in validate_tensorrt(_graph(consumer="Add")))
    assert any("per-channel axis 0 but MatMul mm needs axis 1" in v for v in validate_tensorrt(_graph(axis=0)))
    assert any("opset 21" in v for v in validate_tensorrt(_graph(opset=21)))
    many = validate_tensorrt(_graph(zp_value=3, axis=0, opset=21))
    assert len(many) >= 3
