"""LayerNorm affine folding: a pre-norm LayerNorm's gamma and beta move into the Linears that read it.

A pre-norm transformer block quantizes a LayerNorm's output ``y = γ⊙x̂ + β`` (x̂ the normalized
row) for the Linears that read it (q, k and v; fc1). Since ``y·W + b = x̂·(diag(γ)·W) + (β·W + b)``,
the affine can go into every reader's weight rows and bias, leaving the LayerNorm with γ = 1 and
β = 0: the float function is unchanged, and the quantizer now reads x̂.

Why: OpenVINO's CPU plugin runs a LayerNorm as an MVN node. It fuses a following quantizer into
that MVN, but not a per-channel affine along the last axis of a (B, T, C) tensor (its fusing rules
take per-channel constants along axis 1); with an affine, the affine and the quantizer become a
separate node. Folding removes that node: one fewer per folded LayerNorm, 16 on the default model
(measured on the shipped plan with fold_norm added: 437 -> 421 runtime nodes, 1.5-3% lower latency in
alternating rounds).

Folding changes what is quantized, so it is guarded. Real pretrained transformers often give their
massive-activation channels a tiny γ: there the LayerNorm output is easy to quantize and x̂ is not.
For each LayerNorm the expected int8 error on the readers' outputs is estimated from the
calibration data for both forms, with the usual uniform-noise model: per-tensor uint8 activations,
(range/255)²/12 per element, times Σ‖W_k‖² over the readers' rows; per-output-channel int8 weights,
(max_k |W_kn|/127)²/12 per weight, times Σ E[x_k²]. A LayerNorm is folded only when folding raises
that error by at most `MAX_ERROR_RATIO`; otherwise it is left alone, with the reason in the report.

Like smoothing, a LayerNorm is folded only when every reader is a Linear (MatMul with a constant
weight, then an Add of a constant bias) that the plan asks to fold (``fold_norm: true``). Folding
runs before smoothing; a folded LayerNorm is not smoothed afterwards (that would give it an affine
again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from vggt_deploy.quant.activation_stats import iterate_activations
from vggt_deploy.quant.resolved import ResolvedPlan
from vggt_deploy.quant.smoothing import inspect_site

MAX_ERROR_RATIO = 1.25  # fold only if the estimated int8 error grows by at most 25%


@dataclass
class _Fold:
    """One LayerNorm to fold: its node, input, epsilon, and per reader (MatMul, its bias Add)."""

    norm: onnx.NodeProto
    tensor: str  # the LayerNorm output the readers quantize
    layers: list[str]
    readers: list[tuple[onnx.NodeProto, onnx.NodeProto]]


def _bias_add(graph: onnx.GraphProto, matmul: onnx.NodeProto, inits: dict) -> onnx.NodeProto | None:
    """The Add of a constant bias that is the sole reader of `matmul`'s output, if any."""
    users = [n for n in graph.node if matmul.output[0] in n.input]
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
    return add if other in inits and inits[other].data_type == onnx.TensorProto.FLOAT else None


def fold_candidates(model: onnx.ModelProto, resolved: ResolvedPlan) -> tuple[list[_Fold], list[dict]]:
    """The LayerNorms the plan asks to fold, and the ones that cannot be, as ``{tensor, layers, reason}``."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    quant_nodes = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    layer_of = {n.name: la for n, la in zip(quant_nodes, resolved.layers)}
    asked: dict[str, list] = {}
    for node, layer in zip(quant_nodes, resolved.layers):
        if resolved.spec(layer).fold_norm:
            asked.setdefault(node.input[0], []).append(layer)
    folds, skipped = [], []
    for tensor, layers in asked.items():
        names = [la.name for la in layers]
        norm = next((n for n in graph.node if tensor in n.output), None)
        if norm is None or norm.op_type != "LayerNormalization" or norm.output[0] != tensor:
            continue  # not a LayerNorm output: nothing to fold (not worth a report line)
        site = inspect_site(graph, tensor)
        if isinstance(site, str):
            skipped.append({"tensor": tensor, "layers": names, "reason": site})
            continue
        axis = next((a.i for a in norm.attribute if a.name == "axis"), -1)
        readers = []
        for node in site.readers:
            add = _bias_add(graph, node, inits) if node.op_type == "MatMul" else None
            readers.append((node, add))
        off = [layer_of[n.name].name for n, _ in readers if not resolved.spec(layer_of[n.name]).fold_norm]
        why = (f"also read by {', '.join(off)}, which the plan does not fold (their weights would change too)" if off
               else "a reader is not a MatMul followed by a constant bias Add" if any(a is None for _, a in readers)
               else "LayerNormalization does not normalize the last axis" if axis not in (-1, _rank(graph, norm) - 1)
               else None)
        if why:
            skipped.append({"tensor": tensor, "layers": names, "reason": why})
            continue
        folds.append(_Fold(norm, tensor, [layer_of[n.name].name for n, _ in readers], readers))
    return folds, skipped


def _rank(graph: onnx.GraphProto, node: onnx.NodeProto) -> int:
    """Rank of a node's first input where the graph records it (-1 when unknown)."""
    for v in (*graph.input, *graph.value_info, *graph.output):
        if v.name == node.input[0] and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return -1


def _array(inits: dict, name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name]).astype(np.float64)


def _affine(inits: dict, norm: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    gamma = _array(inits, norm.input[1])
    beta = _array(inits, norm.input[2]) if len(norm.input) > 2 and norm.input[2] else np.zeros_like(gamma)
    return gamma, beta


def int8_error(act_range: float, mean_square: np.ndarray, weight: np.ndarray) -> float:
    """Expected squared int8 error per token on x·W (uniform-noise model; see the module docstring).

    `act_range`: max - min of the per-tensor quantized activation; `mean_square`: E[x_k²] per input
    channel; `weight` (K, N): per-output-channel weight quantization.
    """
    act = (act_range / 255.0) ** 2 / 12.0 * float((weight**2).sum())
    steps = np.abs(weight).max(axis=0) / 127.0
    return act + float((steps**2).sum()) / 12.0 * float(mean_square.sum())


def error_ratios(model: onnx.ModelProto, folds: list[_Fold], images: np.ndarray, image_input: str,
                 extra_feeds: dict[str, np.ndarray] | None = None) -> list[float]:
    """Per fold, estimated int8 error after folding / before, on the calibration images."""
    inits = {i.name: i for i in model.graph.initializer}
    sources = list(dict.fromkeys(f.norm.input[0] for f in folds))
    affines = {f.tensor: _affine(inits, f.norm) for f in folds}
    eps = {f.tensor: next((a.f for a in f.norm.attribute if a.name == "epsilon"), 1e-5) for f in folds}
    stats: dict[str, dict] = {}
    for values in iterate_activations(model, sources, images, image_input, extra_feeds, desc="norm folding"):
        for fold in folds:
            x = values[fold.norm.input[0]]
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            xhat = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + eps[fold.tensor])
            gamma, beta = affines[fold.tensor]
            y = xhat * gamma + beta
            s = stats.setdefault(fold.tensor, {"n": 0, "xhat": [np.inf, -np.inf, 0.0], "y": [np.inf, -np.inf, 0.0]})
            s["n"] += len(x)
            for key, v in (("xhat", xhat), ("y", y)):
                s[key] = [min(s[key][0], v.min()), max(s[key][1], v.max()), s[key][2] + (v**2).sum(axis=0)]
    ratios = []
    for fold in folds:
        s = stats[fold.tensor]
        weight = np.concatenate([_array(inits, mm.input[1]) for mm, _ in fold.readers], axis=1)
        gamma, _ = affines[fold.tensor]
        before = int8_error(s["y"][1] - s["y"][0], s["y"][2] / s["n"], weight)
        after = int8_error(s["xhat"][1] - s["xhat"][0], s["xhat"][2] / s["n"], weight * gamma[:, None])
        ratios.append(after / before if before > 0 else np.inf)
    return ratios


def _set(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str) -> None:
    """node.input[index] becomes an initializer holding `value`, under a new name: others reading the old one keep it."""
    name = f"{node.input[index]}.{suffix}"
    taken = {i.name for i in graph.initializer}
    n = 1
    while name in taken:
        name, n = f"{node.input[index]}.{suffix}{n}", n + 1
    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    node.input[index] = name


def apply_folds(model: onnx.ModelProto, folds: list[_Fold]) -> onnx.ModelProto:
    """A copy of `model` with each fold's γ and β moved into its readers' weights and biases."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    for fold in folds:
        inits = {i.name: i for i in graph.initializer}
        norm = nodes[fold.norm.name]
        gamma, beta = _affine(inits, norm)
        for mm_ref, add_ref in fold.readers:
            mm, add = nodes[mm_ref.name], nodes[add_ref.name]
            weight = _array(inits, mm.input[1])
            port = 1 if add.input[0] == mm.output[0] else 0
            _set(graph, add, port, _array(inits, add.input[port]) + beta @ weight, "normfold")
            _set(graph, mm, 1, weight * gamma[:, None], "normfold")
        channels = len(gamma)
        _set(graph, norm, 1, np.ones(channels), "normfold")
        if len(norm.input) > 2 and norm.input[2]:
            _set(graph, norm, 2, np.zeros(channels), "normfold")
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used or i.name in {v.name for v in graph.input}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def fold_norms(model: onnx.ModelProto, resolved: ResolvedPlan, images: np.ndarray, image_input: str,
               extra_feeds: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, dict]:
    """Fold every LayerNorm the plan asks for where the guard allows: ``(model, report)``.

    The report has ``folded`` ({tensor, norm, layers, error_ratio}) and ``skipped`` ({tensor, layers,
    reason}); `report["folded"]` names the tensors smoothing must leave alone.
    """
    folds, skipped = fold_candidates(model, resolved)
    if not folds:
        return model, {"folded": [], "skipped": skipped}
    ratios = error_ratios(model, folds, images, image_input, extra_feeds)
    taken, folded = [], []
    for fold, ratio in zip(folds, ratios):
        if ratio <= MAX_ERROR_RATIO:
            taken.append(fold)
            folded.append({"tensor": fold.tensor, "norm": fold.norm.name, "layers": fold.layers,
                           "error_ratio": round(float(ratio), 4)})
        else:
            skipped.append({"tensor": fold.tensor, "layers": fold.layers,
                            "reason": f"folding would raise the estimated int8 error {ratio:.2f}x (limit "
                                      f"{MAX_ERROR_RATIO}x): its gamma tames channels that x̂ leaves wide"})
    return (apply_folds(model, taken) if taken else model), {"folded": folded, "skipped": skipped}
