"""Fake quantization in PyTorch, placed by the same resolved plan the exporter uses.

Quantization-aware training (QAT) must quantize every layer exactly as the QDQ export will,
or what training learns does not carry over. So the placement is not re-derived from the
PyTorch model: the plan is resolved on the FP32 ONNX graph (`resolve_plan`), and for every
layer the exporter quantizes, the module at the layer's path (``blocks.3.attn.q``) gets:

- **weights**: the quantizer ONNX Runtime's exporter applies, with a straight-through
  estimator: int8 symmetric per output channel (or per tensor), scale max|w|/127 and levels
  [-127, 127]; int4/int8 per-block (MatMulNBits) with scale = the block's signed extreme
  / -8 (or / -128). The scales follow the weights, as in the export.
- **activations** (static): one learned per-tensor quantizer per ONNX tensor (LSQ: the scale
  is a parameter trained through the straight-through estimator, stored as its log so it
  stays positive; the zero point is fixed at its calibrated value). Tensors read by several
  layers (q, k and v read one LayerNorm output) share one quantizer, as they share one
  QDQ pair in the export. Initial ranges come from the calibration range cache.
- **attention matmuls** (``<module>.qk`` / ``.av``, where the plan quantizes them): the
  quantizers are handed to the `Attention` module (`matmul_quant`).
- dynamic activations: the run-time uint8 min/max quantizer ONNX Runtime applies.

`QatModules.ranges()` turns the learned scales back into (lo, hi) ranges that ONNX
Runtime's quantizer maps to exactly the learned scale and zero point, so the export writes
them with no recalibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from vggt_deploy.errors import UserError
from vggt_deploy.quant.auto_calib import activation_qparams
from vggt_deploy.quant.plan import LayerSpec
from vggt_deploy.quant.resolved import ResolvedPlan


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class ActQuant(nn.Module):
    """Per-tensor activation fake quantizer with a learned scale (LSQ) and a fixed zero point.

    Levels: uint8 [0, 255] with a zero point (ONNX Runtime, OpenVINO), or int8 [-127, 127]
    with zero point 0 (TensorRT). Initialised from a calibrated range exactly as ONNX
    Runtime computes scale and zero point from it.
    """

    def __init__(self, lo: float, hi: float, symmetric: bool) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.qmin, self.qmax = (-127, 127) if symmetric else (0, 255)
        scale, zero = activation_qparams(lo, hi, symmetric)
        self.log_scale = nn.Parameter(torch.tensor(math.log(max(scale, 1e-8)), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with torch.autocast("cpu", enabled=False):  # rounding to 256 levels needs float32, not bf16
            scale = self.log_scale.exp()
            q = torch.clamp(_round_ste(x.float() / scale) + self.zero_point, self.qmin, self.qmax)
            return ((q - self.zero_point) * scale).to(dtype)

    def range(self) -> tuple[float, float]:
        """(lo, hi) from which ONNX Runtime computes exactly this scale and zero point."""
        scale, zero = float(self.log_scale.exp()), float(self.zero_point)
        return (self.qmin - zero) * scale, (self.qmax - zero) * scale


def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's DynamicQuantizeLinear: uint8, range from this tensor's min/max (holding 0)."""
    with torch.autocast("cpu", enabled=False):
        x32 = x.float()
        lo, hi = torch.clamp(x32.detach().min(), max=0.0), torch.clamp(x32.detach().max(), min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=1e-12)
        zero = torch.clamp(torch.round(-lo / scale), 0, 255)
        q = torch.clamp(_round_ste(x32 / scale) + zero, 0, 255)
        return ((q - zero) * scale).to(x.dtype)


def weight_fake_quant(w: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """The weight as the export quantizes it (output channels on axis 0 for Linear and Conv)."""
    with torch.autocast("cpu", enabled=False):
        w32 = w.float()
        if spec.weight_granularity == "per-block":
            bits_min = -8 if spec.precision == "int4" else -128
            blocks = w32.reshape(w32.shape[0], -1, spec.block_size)  # blocks along the input dimension
            idx = blocks.detach().abs().argmax(dim=-1, keepdim=True)
            scale = blocks.detach().gather(-1, idx) / bits_min  # MatMulNBits: the signed extreme maps to the low end
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            q = torch.clamp(_round_ste(blocks / scale), bits_min, -bits_min - 1)
            return (q * scale).reshape(w32.shape).to(w.dtype)
        if spec.weight_granularity == "per-channel":
            amax = w32.detach().abs().reshape(w32.shape[0], -1).amax(dim=1)
            amax = amax.reshape(-1, *([1] * (w32.ndim - 1)))
        else:
            amax = w32.detach().abs().amax()
        scale = torch.clamp(amax / 127.0, min=1e-12)
        return (torch.clamp(_round_ste(w32 / scale), -127, 127) * scale).to(w.dtype)


@dataclass
class QatModules:
    """The quantizers attached to a model: `act[tensor]` per ONNX activation tensor, and the layers."""

    act: nn.ModuleDict
    tensors: list[str]  # ONNX tensor name of act[f"t{i}"]
    readers: list[list[str]]  # the inputs it quantizes, as "<layer>:<input index>" (stable across exports)
    layers: dict[str, str] = field(default_factory=dict)  # layer name -> how it is quantized

    def ranges(self) -> dict[str, tuple[float, float]]:
        """{ONNX tensor: (lo, hi)} of the learned quantizers."""
        return {t: self.act[f"t{i}"].range() for i, t in enumerate(self.tensors)}


def activation_inputs(fp32: onnx.ModelProto, node_name: str) -> list[str]:
    """The inputs of a node that are activations (not initializers), in order."""
    inits = {t.name for t in fp32.graph.initializer}
    node = next(n for n in fp32.graph.node if n.name == node_name)
    return [i for i in node.input[:2] if i and i not in inits]


def attach_fake_quant(model: nn.Module, resolved: ResolvedPlan, fp32: onnx.ModelProto,
                      ranges: dict[str, tuple[float, float]]) -> QatModules:
    """Fake-quantize `model` where the export of `resolved` on `fp32` quantizes; ranges: calibrated (lo, hi)."""
    symmetric = resolved.plan.target == "tensorrt"
    static, dynamic, weight_only = resolved.partition()
    tensors: list[str] = []
    readers: dict[str, list[str]] = {}
    quantizers: dict[str, ActQuant] = {}

    def act(tensor: str, reader: str) -> ActQuant:
        if tensor not in quantizers:
            if tensor not in ranges:
                raise UserError(f"no calibrated range for ONNX tensor {tensor!r}; recalibrate (clear the range cache)")
            quantizers[tensor] = ActQuant(*ranges[tensor], symmetric=symmetric)
            tensors.append(tensor)
        readers.setdefault(tensor, []).append(reader)
        return quantizers[tensor]

    layers: dict[str, str] = {}
    attention: dict[str, dict[str, ActQuant]] = {}
    for layer in [*static, *dynamic, *weight_only]:
        spec = resolved.spec(layer)
        mode = resolved.mode(layer)
        if layer.is_attention_matmul:
            module_path, which = layer.name.rsplit(".", 1)
            a, b = (act(t, f"{layer.name}:{i}") for i, t in enumerate(activation_inputs(fp32, layer.node)))
            attention.setdefault(module_path, {}).update({"q": a, "k": b} if which == "qk" else {"a": a, "v": b})
            layers[layer.name] = f"{mode} activations"
            continue
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:
            raise UserError(f"layer {layer.name!r} of the ONNX graph is not a module of the PyTorch model") from None
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise UserError(f"layer {layer.name!r} is a {type(module).__name__}; QAT quantizes Linear and Conv2d")
        quant_in = act(activation_inputs(fp32, layer.node)[0], f"{layer.name}:0") if mode == "static" else (
            dynamic_fake_quant if mode == "dynamic" else None)
        _wrap(module, spec, quant_in)
        layers[layer.name] = f"{spec.precision} {spec.weight_granularity} weights, {mode} activations"
    for path, fq in attention.items():
        if set(fq) != {"q", "k", "a", "v"}:
            raise UserError(f"{path}: the plan quantizes only one of its two attention matmuls; QAT needs both or neither")
        model.get_submodule(path).matmul_quant = fq
    return QatModules(nn.ModuleDict({f"t{i}": quantizers[t] for i, t in enumerate(tensors)}), tensors,
                      [readers[t] for t in tensors], layers)


def _wrap(module: nn.Module, spec: LayerSpec, quant_in) -> None:
    """Replace the module's forward by one on fake-quantized input and weight (no new state_dict key)."""
    if isinstance(module, nn.Linear):
        def forward(x):
            x = quant_in(x) if quant_in is not None else x
            return F.linear(x, weight_fake_quant(module.weight, spec), module.bias)
    else:
        def forward(x):
            x = quant_in(x) if quant_in is not None else x
            return module._conv_forward(x, weight_fake_quant(module.weight, spec), module.bias)
    module.forward = forward


def detach_fake_quant(model: nn.Module) -> None:
    """Remove every quantizer `attach_fake_quant` placed (the model is a float model again)."""
    for module in model.modules():
        if "forward" in module.__dict__:
            del module.forward
        if "matmul_quant" in module.__dict__:
            del module.matmul_quant
