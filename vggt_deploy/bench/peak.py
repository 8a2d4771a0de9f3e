"""This machine's matrix-multiply peak in ONNX Runtime: the ceiling the targets are measured against.

A large square MatMul (float32) and MatMulInteger (uint8 x int8 -> int32, the
kernel ONNX Runtime's int8 CPU paths use) are timed with the same thread
settings as the benchmark; GOPS = 2·M·K·N / seconds. A target's achieved GOPS
(its GFLOPs per image x images per second) divided by the matching peak says
how far from the hardware it runs.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.bench.timing import time_alternating


def _matmul_model(n: int, int8: bool) -> bytes:
    rng = np.random.default_rng(0)
    if int8:
        b = numpy_helper.from_array(rng.integers(-128, 128, size=(n, n), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.normal(size=(n, n)).astype(np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], initializer=[b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def matmul_peak_gops(n: int = 1024, threads: int | None = None, rounds: int = 20) -> dict[str, float]:
    """Peak GOPS for fp32 MatMul and int8 MatMulInteger of size n x n x n."""
    rng = np.random.default_rng(1)
    a_f = rng.normal(size=(n, n)).astype(np.float32)
    a_u8 = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    fp32 = make_session(_matmul_model(n, int8=False), threads=threads)
    int8 = make_session(_matmul_model(n, int8=True), threads=threads)
    stats = time_alternating({"fp32": lambda: fp32.run(None, {"a": a_f}), "int8": lambda: int8.run(None, {"a": a_u8})},
                             warmup=3, rounds=rounds)
    ops = 2.0 * n**3
    return {k: ops / (s.p50 / 1e3) / 1e9 for k, s in stats.items()}


def achieved_fraction(gflops: float | None, fps: float | None, peak_gops: float) -> tuple[float | None, float | None]:
    """(achieved GOPS, fraction of peak) for a target, or (None, None) when unknown."""
    if not gflops or not fps or not peak_gops:
        return None, None
    achieved = gflops * fps
    return achieved, achieved / peak_gops

