"""Exact graph rewrites that let OpenVINO's CPU plugin run fewer nodes.

They run where OpenVINO reads an ONNX file (`read_for_cpu`, after zero-point folding), never on the
file on disk: ONNX Runtime's attention fusion wants the exported form (separate q, k and v
projections, see model/layers.py). Each gives the same function; outputs move by float rounding only.

- `fold_key_affines`: with per-head q/k LayerNorms, q'·k' = Σ (n_q γq + βq)(n_k γk + βk). Every term
  that depends on the query row only is the same for all keys, and the softmax that follows ignores
  a per-row constant, so q'·k' can become q''·n_k with q'' = n_q ⊙ γq γk + βq ⊙ γk. The key's
  LayerNorm then has no affine, and OpenVINO drops that node (15 on the default model).
- `conv_tokens`: Conv -> Reshape (B, C, HW) -> Transpose (0, 2, 1), the patch embedding's
  `flatten(2).transpose(1, 2)`, becomes Conv -> Transpose (0, 2, 3, 1) -> Reshape (B, HW, C).
  OpenVINO keeps conv outputs channels-last, so the new Transpose is absorbed into that layout. The old
  form cost a reorder to channels-first and a transpose back.
- `fuse_sibling_matmuls`: int8 MatMuls that read the same quantized activation (q, k and v of a
  block) become one MatMul over the concatenated weights, then a Split. Per-channel weight scales and
  biases concatenate exactly. OpenVINO then runs one larger FullyConnected instead of three.
- `heads_first` (heads_first.py): after that fusion, q, k and v move to (B, heads, T, hs) with one
  Transpose, and the q and k LayerNorms become one, so OpenVINO no longer copies a Split, runs a
  second MVN and transposes the key outside its attention node. Only for a graph compiled for one
  image (`single_batch`): its Splits are free only while the batch axis is 1 (at batch 8 it measured
  0.963x, two copies more).
- `transpose_b`: a Transpose that makes its input's last axis the second-to-last of a MatMul's right
  operand (the key's (0, 2, 3, 1)) is written as a Transpose that keeps the last axis, then a swap of
  the last two. OpenVINO folds the swap into the MatMul (transpose_b), and the Transpose left copies
  whole rows instead of single elements (about half the time).
- `quantize_before_moves`: a per-tensor quantizer after Transposes/Reshapes (the attention output's
  (B, nh, T, hs) -> (B, T, C) before the projection) moves above them, since rounding each element
  commutes with moving it. OpenVINO then quantizes inside the attention node and moves int8 data.

Measured on the shipped plan (OpenVINO 2026.4, bf16, 2 threads, alternating rounds in one process):
the nodes OpenVINO executes fall from 319 to 271, and the latency by 6-8% against the same file with
zero points folded only. Each rewrite on top of the ones before gave 1.033x, 1.007x, 1.022x, 1.015x,
1.015x and 1.007-1.022x (heads_first); those single steps are at the edge of this host's noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from vggt_deploy.backends.openvino.heads_first import heads_first
from vggt_deploy.backends.openvino.onnx_graph import GraphIndex, attr, drop_unused, norm_affine


@dataclass(frozen=True)
class RewriteReport:
    """How often each rewrite applied."""

    key_affines: int  # attention key LayerNorm affines moved into the query's
    conv_tokens: int  # conv -> token transposes done in the conv's channels-last layout
    fused_matmuls: int  # groups of sibling int8 MatMuls now run as one
    heads_first: int  # fused q/k/v projections moved to head-major layout with one q/k LayerNorm
    transposes_b: int  # MatMul right-operand transposes split into a row copy and OpenVINO's transpose_b
    quantizers_moved: int  # activation quantizers moved above the Transposes/Reshapes before them

    @property
    def total(self) -> int:
        return (self.key_affines + self.conv_tokens + self.fused_matmuls + self.heads_first + self.transposes_b
                + self.quantizers_moved)


def rewrite_for_cpu(model: onnx.ModelProto, single_batch: bool = True) -> RewriteReport:
    """Apply every rewrite to `model` in place, then drop what they left unused.

    `single_batch`: the graph will be compiled for batch 1 only, which `heads_first` needs to pay off.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = RewriteReport(
        key_affines=fold_key_affines(GraphIndex(model.graph)) if opset >= 13 else 0,  # Softmax axis semantics
        conv_tokens=conv_tokens(GraphIndex(model.graph)),
        fused_matmuls=fuse_sibling_matmuls(GraphIndex(model.graph)),
        heads_first=heads_first(GraphIndex(model.graph)) if opset >= 13 and single_batch else 0,  # Split input
        transposes_b=transpose_b(GraphIndex(model.graph)),
        quantizers_moved=quantize_before_moves(GraphIndex(model.graph)),
    )
    if report.total:
        drop_unused(model)
    return report


# --- fold_key_affines -------------------------------------------------------------------------------


def _feeds_softmax(g: GraphIndex, name: str) -> bool:
    """Whether `name` reaches a last-axis Softmax through Adds only, each its sole reader."""
    while True:
        user = g.sole_user(name)
        if user is None:
            return False
        if user.op_type == "Softmax":
            return attr(user, "axis", -1) == -1
        if user.op_type != "Add" or list(user.input).count(name) != 1:
            return False
        name = user.output[0]


def _head_norm(g: GraphIndex, name: str, pos: int) -> onnx.NodeProto | None:
    """The LayerNorm whose normalised (last) axis becomes axis `pos` (from the end) of `name`.

    Walks back through Transposes (tracking where that axis goes) and Reshapes that keep the last
    axis whole, each read only by the next step. None when the chain is anything else.
    """
    widths = set()
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Transpose", "Reshape"):
        if g.sole_user(node.output[0]) is None:
            return None
        if node.op_type == "Transpose":
            perm = attr(node, "perm")
            if perm is None or not -len(perm) <= pos < 0:
                return None
            pos = perm[len(perm) + pos] - len(perm)
        else:
            shape = g.const(node.input[1])
            if shape is None or pos != -1 or shape.ndim != 1 or shape.size == 0 or shape[-1] <= 0:
                return None
            widths.add(int(shape[-1]))
        name = node.input[0]
        node = g.producer.get(name)
    if node is None or node.op_type != "LayerNormalization" or pos != -1 or attr(node, "axis", -1) != -1:
        return None
    if g.sole_user(node.output[0]) is None or any(out for out in node.output[1:]):
        return None
    affine = norm_affine(g, node)
    return node if affine is not None and not widths - {affine[0].size} else None


def fold_key_affines(g: GraphIndex) -> int:
    """Move each attention's key LayerNorm affine into its query LayerNorm's; returns how many moved."""
    done = 0
    for matmul in list(g.graph.node):
        if matmul.op_type != "MatMul" or not _feeds_softmax(g, matmul.output[0]):
            continue
        q_norm, k_norm = _head_norm(g, matmul.input[0], -1), _head_norm(g, matmul.input[1], -2)
        if q_norm is None or k_norm is None or q_norm is k_norm:
            continue
        (gamma_q, beta_q), (gamma_k, _) = norm_affine(g, q_norm), norm_affine(g, k_norm)  # checked by _head_norm
        if gamma_q.shape != gamma_k.shape:
            continue
        dtype = gamma_q.dtype
        q_inputs = [q_norm.input[0], g.add_init(q_norm.input[1] + "_kfold", (gamma_q * gamma_k).astype(dtype)),
                    g.add_init(q_norm.input[1] + "_kfold_bias", (beta_q * gamma_k).astype(dtype))]
        del q_norm.input[:]
        q_norm.input.extend(q_inputs)
        k_inputs = [k_norm.input[0], g.add_init(k_norm.input[1] + "_unit", np.ones_like(gamma_k))]
        del k_norm.input[:]
        k_norm.input.extend(k_inputs)
        done += 1
    return done


# --- conv_tokens --------------------------------------------------------------------------------------


def _out_channels(g: GraphIndex, conv: onnx.NodeProto) -> int | None:
    """A 2-D Conv's output channels, from its constant (or dequantized constant) weight."""
    weight = g.const(conv.input[1])
    if weight is None:
        deq = g.producer.get(conv.input[1])
        weight = g.const(deq.input[0]) if deq is not None and deq.op_type == "DequantizeLinear" else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 4 else None


def conv_tokens(g: GraphIndex) -> int:
    """Rewrite Conv -> Reshape (B, C, HW) -> Transpose (0, 2, 1) to transpose in the conv's own layout."""
    done = 0
    for transpose in list(g.graph.node):
        if transpose.op_type != "Transpose" or list(attr(transpose, "perm", [])) != [0, 2, 1]:
            continue
        reshape = g.producer.get(transpose.input[0])
        if reshape is None or reshape.op_type != "Reshape" or g.sole_user(reshape.output[0]) is not transpose:
            continue
        conv = g.producer.get(reshape.input[0])
        shape = g.const(reshape.input[1])
        if conv is None or conv.op_type != "Conv" or shape is None or shape.shape != (3,) or 0 in shape:
            continue
        channels = _out_channels(g, conv)
        if channels is None or shape[1] != channels or list(shape).count(-1) > 1:
            continue
        nhwc = g.fresh(conv.output[0] + "_nhwc")
        tokens_shape = g.add_init(reshape.input[1] + "_tokens", np.array([shape[0], shape[2], shape[1]], np.int64))
        new = [onnx.helper.make_node("Transpose", [reshape.input[0]], [nhwc], perm=[0, 2, 3, 1],
                                     name=g.fresh(conv.name + "_nhwc")),
               onnx.helper.make_node("Reshape", [nhwc, tokens_shape], [transpose.output[0]],
                                     name=g.fresh(conv.name + "_tokens"))]
        at = list(g.graph.node).index(reshape)
        g.graph.node.remove(reshape)
        g.graph.node.remove(transpose)
        for offset, node in enumerate(new):
            g.graph.node.insert(at + offset, node)
        done += 1
    return done


# --- fuse_sibling_matmuls -----------------------------------------------------------------------------


@dataclass
class _Sibling:
    """One int8 MatMul x·W (+ b): its nodes, weight codes, per-column scales and zero points, bias."""

    matmul: onnx.NodeProto
    weight_deq: onnx.NodeProto
    bias_add: onnx.NodeProto | None
    codes: np.ndarray  # (K, N) int8
    scales: np.ndarray  # (N,)
    zeros: np.ndarray  # (N,)
    bias: np.ndarray | None  # (N,)

    @property
    def result(self) -> str:
        return (self.bias_add or self.matmul).output[0]


def _activation_key(g: GraphIndex, name: str) -> tuple | None:
    """What a MatMul's quantized input is, as a hashable key: the source tensor, the shift that zero-point
    folding added (if any), the scale and the zero point. Two MatMuls with equal keys read equal values."""
    deq = g.producer.get(name)
    if deq is None or deq.op_type != "DequantizeLinear" or len(deq.input) < 3:
        return None
    quant = g.producer.get(deq.input[0])
    if quant is None or quant.op_type != "QuantizeLinear" or len(quant.input) < 3:
        return None
    scale, zero = g.const(deq.input[1]), g.const(deq.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    if not (np.array_equal(g.const(quant.input[1]), scale) and np.array_equal(g.const(quant.input[2]), zero)):
        return None
    source, shift = quant.input[0], None
    shifter = g.producer.get(source)
    if shifter is not None and shifter.op_type == "Add" and g.const(shifter.input[1]) is not None:
        value = g.const(shifter.input[1])
        if value.size == 1 and shifter.input[0] not in g.inits:
            source, shift = shifter.input[0], float(value.reshape(-1)[0])
    return source, shift, float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), zero.dtype.str


def _sibling(g: GraphIndex, matmul: onnx.NodeProto) -> _Sibling | None:
    """`matmul` as a fusion candidate: a 2-D int8 weight dequantized per column or per tensor, and at most
    a constant (N,) bias Add after it."""
    deq = g.producer.get(matmul.input[1])
    if deq is None or deq.op_type != "DequantizeLinear" or g.sole_user(deq.output[0]) is not matmul:
        return None
    codes, scales = g.const(deq.input[0]), g.const(deq.input[1])
    zeros = g.const(deq.input[2]) if len(deq.input) > 2 else np.zeros((), np.int8)
    if codes is None or scales is None or zeros is None or codes.dtype != np.int8 or codes.ndim != 2:
        return None
    n = codes.shape[1]
    if scales.size == 1 and zeros.size == 1:
        scales, zeros = np.full(n, scales.reshape(-1)[0], scales.dtype), np.full(n, zeros.reshape(-1)[0], zeros.dtype)
    elif not (scales.shape == zeros.shape == (n,) and attr(deq, "axis", 1) in (1, -1)):
        return None
    add, bias = g.sole_user(matmul.output[0]), None
    if add is not None and add.op_type == "Add" and add.input[0] == matmul.output[0]:
        bias = g.const(add.input[1])
        if bias is None or bias.shape != (n,) or bias.dtype != np.float32:
            add, bias = None, None
    else:
        add = None
    return _Sibling(matmul, deq, add, codes, scales, zeros.astype(np.int8), bias)


def fuse_sibling_matmuls(g: GraphIndex) -> int:
    """Fuse each group of int8 MatMuls that read the same quantized activation; returns the groups fused."""
    groups: dict[tuple, list[_Sibling]] = {}
    for node in g.graph.node:
        if node.op_type == "MatMul":
            key = _activation_key(g, node.input[0])
            sibling = _sibling(g, node) if key is not None else None
            if sibling is not None:
                groups.setdefault(key, []).append(sibling)
    done = 0
    order = {id(node): i for i, node in enumerate(g.graph.node)}
    for members in groups.values():
        if len(members) < 2 or len({m.codes.shape[0] for m in members}) != 1:
            continue
        members.sort(key=lambda m: order[id(m.matmul)])
        _fuse(g, members)
        done += 1
    return done


def _fuse(g: GraphIndex, members: list[_Sibling]) -> None:
    first = members[0].matmul
    base = g.fresh(first.name + "_siblings")
    widths = np.array([m.codes.shape[1] for m in members], np.int64)
    codes = g.add_init(base + "_w", np.concatenate([m.codes for m in members], axis=1))
    scales = g.add_init(base + "_w_scale", np.concatenate([m.scales for m in members]).astype(np.float32))
    zeros = g.add_init(base + "_w_zero", np.concatenate([m.zeros for m in members]))
    weight, product = g.fresh(base + "_wdq"), g.fresh(base + "_mm")
    nodes = [onnx.helper.make_node("DequantizeLinear", [codes, scales, zeros], [weight], axis=1, name=weight),
             onnx.helper.make_node("MatMul", [first.input[0], weight], [product], name=product)]
    if any(m.bias is not None for m in members):
        bias = np.concatenate([m.bias if m.bias is not None else np.zeros(len(m.scales), np.float32) for m in members])
        biased = g.fresh(base + "_add")
        nodes.append(onnx.helper.make_node("Add", [product, g.add_init(base + "_bias", bias)], [biased], name=biased))
        product = biased
    nodes.append(onnx.helper.make_node("Split", [product, g.add_init(base + "_widths", widths)],
                                       [m.result for m in members], axis=-1, name=g.fresh(base + "_split")))
    for m in members:
        for node in (m.matmul, m.weight_deq, m.bias_add):
            if node is not None and node is not first:
                g.graph.node.remove(node)
    at = list(g.graph.node).index(first)  # the first member's place: its input exists, no result is read yet
    g.graph.node.remove(first)
    for offset, node in enumerate(nodes):
        g.graph.node.insert(at + offset, node)


# --- transpose_b --------------------------------------------------------------------------------------


def transpose_b(g: GraphIndex) -> int:
    """Split each MatMul right-operand Transpose that puts the last axis second-to-last; returns how many."""
    done = 0
    for transpose in list(g.graph.node):
        perm = list(attr(transpose, "perm", []) or [])
        user = g.sole_user(transpose.output[0]) if transpose.op_type == "Transpose" else None
        if user is None or user.op_type != "MatMul" or list(user.input).index(transpose.output[0]) != 1:
            continue  # only the right operand
        rank = len(perm)
        if rank < 3 or perm[-2] != rank - 1:
            continue
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        if perm == swap:  # already a plain swap: OpenVINO folds it into the MatMul as it is
            continue
        rows = g.fresh(transpose.output[0] + "_rows")
        new_perm = perm[:-2] + [perm[-1], perm[-2]]  # = perm with the last two swapped: keeps the last axis
        for a in transpose.attribute:
            if a.name == "perm":
                a.CopyFrom(onnx.helper.make_attribute("perm", new_perm))
        swapped = onnx.helper.make_node("Transpose", [rows], [transpose.output[0]], perm=swap,
                                        name=g.fresh(transpose.name + "_swap"))
        transpose.output[0] = rows
        g.graph.node.insert(list(g.graph.node).index(transpose) + 1, swapped)
        done += 1
    return done


# --- quantize_before_moves ----------------------------------------------------------------------------


def _scalar(g: GraphIndex, name: str) -> bool:
    value = g.const(name)
    return value is not None and value.size == 1


def _per_tensor_pair(g: GraphIndex, quant: onnx.NodeProto) -> onnx.NodeProto | None:
    """The one DequantizeLinear after `quant` when both are per-tensor with constant parameters."""
    deq = g.sole_user(quant.output[0])
    if deq is None or deq.op_type != "DequantizeLinear" or deq.output[0] in g.outputs:
        return None
    return deq if all(_scalar(g, name) for name in (*quant.input[1:], *deq.input[1:])) else None


def quantize_before_moves(g: GraphIndex) -> int:
    """Move per-tensor activation quantizers (with a scalar shift Add before them) above the chain of
    Transposes/Reshapes feeding them; returns how many moved."""
    done = 0
    for quant in list(g.graph.node):
        if quant.op_type != "QuantizeLinear" or len(quant.input) < 2 or (deq := _per_tensor_pair(g, quant)) is None:
            continue
        head = g.producer.get(quant.input[0])
        if head is None or head.op_type != "Add" or g.sole_user(head.output[0]) is not quant \
                or not _scalar(g, head.input[1]) or head.input[0] in g.inits:
            head = quant
        moves, below = [], head
        node = g.producer.get(head.input[0])
        while node is not None and node.op_type in ("Transpose", "Reshape") and g.sole_user(node.output[0]) is below:
            moves.append(node)
            below, node = node, g.producer.get(node.input[0])
        if not moves:
            continue
        first, last = moves[-1], moves[0]  # in data order
        readers = g.consumers.get(deq.output[0], [])
        for reader in readers:
            reader.input[:] = [last.output[0] if name == deq.output[0] else name for name in reader.input]
        head.input[0], first.input[0] = first.input[0], deq.output[0]
        stale = {quant.output[0], deq.output[0], head.output[0], *(m.output[0] for m in moves)}
        kept = [v for v in g.graph.value_info if v.name not in stale]  # shapes changed: let OpenVINO infer them
        del g.graph.value_info[:]
        g.graph.value_info.extend(kept)
        lifted = [head, quant, deq] if head is not quant else [quant, deq]
        for node in lifted:
            g.graph.node.remove(node)
        at = list(g.graph.node).index(first)
        for offset, node in enumerate(lifted):
            g.graph.node.insert(at + offset, node)
        g.relink()
        done += 1
    return done
