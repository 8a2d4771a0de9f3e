"""The plan's vocabulary and what each target can run: the tables `parse_plan` checks every field against."""

TARGETS = ("tensorrt", "onnxruntime-cpu", "openvino-cpu")
PRECISIONS = ("int8", "int4", "int16", "fp16", "bf16", "fp32")
GRANULARITIES = ("per-channel", "per-tensor", "per-block")
ACTIVATIONS = ("static", "dynamic", "off")
METHODS = ("auto", "minmax", "percentile", "entropy", "mse")

# What each target's runtime can run at all. TensorRT has no int16 QDQ and no dynamic activation
# quantization, and its int4 weight-only path needs blocked DequantizeLinear (opset 21), which
# TensorRT 10.3's parser (JetPack 6) does not read. ONNX Runtime's CPU provider has no fast fp16
# kernels, so fp16 there would be a silent slowdown, and no fast bf16 path either. OpenVINO reads the
# ONNX Runtime QDQ flavour (U8S8, static activations) and runs float layers in bf16 where the CPU has
# AVX512_BF16 or AMX; `fp32` layers are pinned to fp32 there. It cannot read ONNX Runtime's
# MatMulNBits (int4/weight-only) or DynamicQuantizeMatMul (dynamic activations).
TARGET_CAN_RUN = {"tensorrt": ("int8", "fp16", "fp32"), "onnxruntime-cpu": ("int8", "int4", "int16", "fp32"),
                  "openvino-cpu": ("int8", "bf16", "fp32")}
# What this release builds for each target: the parser refuses the rest, so `plan show` and
# `export` agree (quant/qdq.py keeps its own check as a second guard).
TARGET_PRECISIONS = {"tensorrt": ("int8", "fp16", "fp32"), "onnxruntime-cpu": ("int8", "int4", "fp32"),
                     "openvino-cpu": ("int8", "bf16", "fp32")}
# Why a precision cannot run on a target, where a reason helps more than the list of what can.
CANNOT_RUN_WHY = {("bf16", "onnxruntime-cpu"): "ONNX Runtime's CPU provider has no fast bf16 path; use target "
                                               "openvino-cpu for bf16 float layers, or fp32",
                  ("bf16", "tensorrt"): "TensorRT's reduced float precision is fp16"}
# What a layer kept float becomes when a tool (sensitivity, plan auto) chooses: OpenVINO runs float layers in bf16,
# and an fp32 layer would make it run the whole graph in f32; the other targets keep fp32.
KEPT_FLOAT = {"tensorrt": "fp32", "onnxruntime-cpu": "fp32", "openvino-cpu": "bf16"}
# Precisions a target could run but this release does not build yet, and what to use instead.
NOT_IMPLEMENTED = {"int16": "int8 or fp32"}
TARGET_ACTIVATIONS = {"tensorrt": ("static",), "onnxruntime-cpu": ACTIVATIONS, "openvino-cpu": ("static",)}
