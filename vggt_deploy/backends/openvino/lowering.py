"""How an ONNX file is lowered for OpenVINO's CPU plugin: zero-point folding here, then the exact rewrites
of rewrites.py (`lowered_onnx` runs both).

Zero-point folding: a QDQ file's activation zero points moved into a shift and the biases.

Why: OpenVINO's CPU plugin runs an int8 FullyConnected faster when its activations carry no
zero point: it then takes its "legacy" quantized FC path (measured on the shipped plan, FCs 6%
faster in the per-layer profile, the model 1-3% in alternating timing). The exporter writes
uint8 activations with zero points, which is what ONNX Runtime's x86 kernels want, so the
rewrite happens where OpenVINO reads the file (`OvRunner`, `build-ov`), never in the shared QDQ ONNX.

The rewrite keeps the quantization grid. An activation quantized as q = clamp(round(x/s) + z, 0, 255)
is the same code as clamp(round((x + d)/s), 0, 255) with d = z·s and zero point 0. The quantizer
therefore reads x + d (an Add of a constant, which OpenVINO fuses into the op before it), and the
dequantized value it hands on is x̂ + d. Each consumer x̂·W + b is restored by b' = b - d·Σₖ W[k, :],
from the dequantized weights. Only the float rounding of x + d differs, so outputs move by
rounding flips only (measured on the shipped plan: as much as ONNX Runtime and OpenVINO differ on
the same file, 25x less than the quantization error). A quantizer is folded only where every consumer
can take the correction: a MatMul with a constant (or dequantized constant) weight, read directly or
through data movement (Transpose, Reshape); the correction goes into its bias Add, or into a new Add
where the simplifier removed a zero bias. Elsewhere (a padded convolution, where the shift would reach the
padding) a zero point of 128 becomes int8 with zero point 0, the same grid relabelled; any other
zero point is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from vggt_deploy.backends.openvino.onnx_graph import GraphIndex, drop_unused
from vggt_deploy.backends.openvino.rewrites import RewriteReport, rewrite_for_cpu

SUFFIX = "_zpfold"
MOVES = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")  # move values, never change them


@dataclass(frozen=True)
class FoldReport:
    """What `fold_zero_points` did: quantizers rewritten, uint8 ones left as they were, biases corrected."""

    folded: int
    kept: int
    biases: int


def _dequantized_weight(g: GraphIndex, name: str) -> np.ndarray | None:
    """The float value of a MatMul's weight input: an initializer, or a DequantizeLinear of initializers."""
    direct = g.const(name)
    if direct is not None:
        return direct.astype(np.float32) if direct.dtype.kind == "f" else None
    node = g.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    values = [g.const(i) for i in node.input]
    if any(v is None for v in values):
        return None
    q, scale = values[0].astype(np.float32), values[1].astype(np.float32)
    zero = values[2].astype(np.float32) if len(values) > 2 else np.zeros_like(scale)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:  # per-channel: scale and zero point lie along `axis`
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _weight_sums(g: GraphIndex, consumer: onnx.NodeProto, x_name: str) -> np.ndarray | None:
    """Σₖ W[k, :] when `consumer` is x·W with W constant (x its only activation input), else None."""
    if consumer.op_type != "MatMul" or list(consumer.input).count(x_name) != 1 or consumer.input[0] != x_name:
        return None
    weight = _dequantized_weight(g, consumer.input[1])
    return None if weight is None or weight.ndim != 2 else weight.sum(axis=0)


def _correct_bias(g: GraphIndex, matmul: onnx.NodeProto, correction: np.ndarray) -> None:
    """Add `correction` (N,) to matmul's output: into its constant bias Add when it has one, else as a new Add."""
    users = g.consumers.get(matmul.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add" and matmul.output[0] not in g.outputs:
        add = users[0]
        index = 1 if add.input[0] == matmul.output[0] else 0
        bias = g.const(add.input[index])
        if bias is not None and bias.dtype == np.float32 and bias.shape in (correction.shape, (1, *correction.shape)):
            fixed = (bias + correction.reshape(bias.shape)).astype(np.float32)
            add.input[index] = g.add_init(add.input[index] + SUFFIX, fixed)
            return
    # No bias to take it (a zero bias the simplifier removed): a new Add, which OpenVINO fuses as the FC's bias.
    raw = g.fresh(matmul.output[0] + SUFFIX)
    const = g.add_init(raw + "_bias", correction.astype(np.float32))
    add = onnx.helper.make_node("Add", [raw, const], [matmul.output[0]], name=g.fresh(matmul.name + SUFFIX))
    g.producer[matmul.output[0]], g.producer[raw], g.consumers[raw] = add, matmul, [add]
    matmul.output[0] = raw
    g.graph.node.insert(list(g.graph.node).index(matmul) + 1, add)


def _fixes(g: GraphIndex, deqs: list[onnx.NodeProto]) -> list[tuple[onnx.NodeProto, np.ndarray]] | None:
    """(MatMul, Σₖ W[k, :]) for every MatMul the dequantized values reach, or None when some consumer cannot
    take a bias correction. Data movement in between (Transpose, Reshape, ...) carries the constant shift
    unchanged, so it is walked through."""
    fixes: list[tuple[onnx.NodeProto, np.ndarray]] = []
    pending = [deq.output[0] for deq in deqs]
    while pending:
        name = pending.pop()
        if name in g.outputs:
            return None
        for user in g.consumers.get(name, []):
            if user.op_type in MOVES and user.input[0] == name and list(user.input).count(name) == 1:
                pending.append(user.output[0])
                continue
            sums = _weight_sums(g, user, name)
            if sums is None:
                return None
            fixes.append((user, sums))
    return fixes


def _fold_one(g: GraphIndex, quant: onnx.NodeProto, counts: dict[str, int]) -> bool:
    """Rewrite one uint8 per-tensor activation quantizer and its dequantizers; False (untouched) if unsafe.

    Preferred: uint8 with zero point 0 reading x + z·s (VNNI multiplies uint8 by int8 natively).
    Where a consumer cannot take the bias correction (a padded convolution) and z = 128: int8 with
    zero point 0, reading x itself.
    """
    scale, zero = g.const(quant.input[1]), g.const(quant.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or quant.output[0] in g.outputs:
        return False
    deqs = g.consumers.get(quant.output[0], [])
    for deq in deqs:
        if deq.op_type != "DequantizeLinear" or len(deq.input) < 3 or deq.output[0] in g.outputs:
            return False
        if not (np.array_equal(g.const(deq.input[1]), scale) and np.array_equal(g.const(deq.input[2]), zero)):
            return False
    z = int(zero.reshape(-1)[0])
    fixes = _fixes(g, deqs)
    if fixes is not None:
        shift, dtype = np.float32(z * np.float32(scale.reshape(-1)[0])), np.uint8
    elif z == 128:
        shift, dtype, fixes = np.float32(0), np.int8, []
    else:
        return False
    zero_name = g.add_init(quant.input[2] + SUFFIX, np.zeros(zero.shape, dtype))
    if shift != 0:
        shifted = g.fresh(quant.input[0] + SUFFIX)
        const = g.add_init(shifted + "_shift", np.array(shift, np.float32))
        add = onnx.helper.make_node("Add", [quant.input[0], const], [shifted], name=g.fresh(quant.name + SUFFIX))
        g.graph.node.insert(list(g.graph.node).index(quant), add)
        g.consumers.setdefault(quant.input[0], []).append(add)
        g.producer[shifted], g.consumers[shifted] = add, [quant]
        quant.input[0] = shifted
    quant.input[2] = zero_name
    for deq in deqs:
        deq.input[2] = zero_name
    for matmul, sums in fixes:
        _correct_bias(g, matmul, -shift * sums)
        counts["biases"] += 1
    return True


def fold_zero_points(model: onnx.ModelProto) -> FoldReport:
    """Rewrite `model` in place: every uint8 activation quantizer with a zero point that can be folded is.

    Weights are untouched (the exporter writes them int8 symmetric). Node order stays topological:
    each new Add sits right before the quantizer it feeds. Initializers the rewrite left unused
    (old zero points and biases) are dropped.
    """
    g = GraphIndex(model.graph)
    counts = {"folded": 0, "kept": 0, "biases": 0}
    for quant in list(model.graph.node):  # a snapshot: folding inserts nodes
        if _has_zero_point(quant, g.inits) and quant.input[0] not in g.inits:  # not a weight's quantizer
            counts["folded" if _fold_one(g, quant, counts) else "kept"] += 1
    if counts["folded"]:
        drop_unused(model)
    return FoldReport(**counts)


@dataclass(frozen=True)
class Lowering:
    """What happened to a file on its way into OpenVINO; None for a step that was not asked for."""

    fold: FoldReport | None
    rewrites: RewriteReport | None


def lowered_onnx(path: Path, fold: bool = True, rewrite: bool = True,
                 single_batch: bool = True) -> tuple[bytes, Lowering] | None:
    """`path` as OpenVINO should read it: zero points folded (`fold`), then the exact rewrites of
    rewrites.py (`rewrite`; `single_batch`: the graph is compiled for batch 1 only), serialized for
    `core.read_model(io.BytesIO(...))`.

    None when neither changed anything, or when the model keeps its weights in external data (above
    2 GB: it cannot travel as one protobuf), which OpenVINO then reads as it is. A file that is parsed here
    is checked as `load_onnx` checks it (one UserError naming the file); the file is parsed once.
    """
    from vggt_deploy.graph.onnx_io import check_onnx, check_onnx_file, has_external_data, over_2gb

    if not (fold or rewrite):
        return None
    check_onnx_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)  # whole, unless its weights are external
    except Exception:  # noqa: BLE001 - not ONNX at all: OpenVINO's own reading reports it
        return None
    inits = {t.name: t for t in model.graph.initializer}
    if has_external_data(model) or not (rewrite or any(_has_zero_point(node, inits) for node in model.graph.node)):
        return None
    check_onnx(model, path)
    folded = fold_zero_points(model) if fold else None
    rewrites = rewrite_for_cpu(model, single_batch) if rewrite else None
    if not ((folded and folded.folded) or (rewrites and rewrites.total)) or over_2gb(model):
        return None
    return model.SerializeToString(), Lowering(folded, rewrites)


def _has_zero_point(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether `node` is a QuantizeLinear with a constant uint8 zero point other than 0 (something to fold)."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
        return False
    zero = numpy_helper.to_array(inits[node.input[2]])
    return zero.dtype == np.uint8 and bool(zero.any())
