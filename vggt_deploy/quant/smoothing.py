"""SmoothQuant (Xiao et al. 2023) as a transform of the FP32 ONNX graph, folded so no op is added.

A Linear ``y = x·W`` reads an activation whose few outlier channels dominate its int8 range,
while its weight is easy to quantize. Per input channel k, with ``a_k = max|x_k|`` (calibration
data) and ``w_k = max_n |W_kn|``::

    s_k = a_k**alpha / w_k**(1 - alpha)        x' = x / s        W' = diag(s)·W

leaves ``y`` unchanged in exact arithmetic and moves part of the outlier into the weight rows.
The division by s is folded into the producer of x (so the graph gains no op):

* ``LayerNormalization`` with constant gamma/beta: gamma/s, beta/s;
* a Linear ``MatMul(.., Wp)``, optionally followed directly by ``Add(b)``: Wp/s on its output
  columns, b/s.

A tensor read by several Linears (q, k and v all read one LayerNorm) is one `SmoothGroup`: one s,
computed from the largest weight row over all readers, and every reader's weight multiplied by it.
It is only legal when EVERY reader of x compensates, so a tensor that also feeds a residual Add, a
Shape, an activation×activation MatMul or a graph output is skipped, with the reason. Every reader
must also ask for smoothing in the plan (the factors change every reader's weight; a reader the
plan leaves alone would be changed anyway); readers asking for different alphas get the first one
in graph order, said in the group's ``note``. Initializers read by any node outside the group are
copied before they are rescaled, so no other node's input changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from vggt_deploy.quant.activation_stats import channel_absmax
from vggt_deploy.quant.resolved import ResolvedPlan

MIN_FACTOR = 1e-5
# (node, input index, axis, power): the initializer at node.input[index] becomes arr * s**power along axis.
_Edit = tuple[onnx.NodeProto, int, int, int]


@dataclass
class SmoothGroup:
    """One activation tensor and the Linears that read it, smoothed with one set of factors."""

    tensor: str  # the activation x
    layers: list[str]  # plan names of its readers
    nodes: list[str]  # their ONNX node names
    alpha: float
    producer: str  # "LayerNormalization" | "MatMul" | "MatMul+Add"
    producer_node: str
    note: str = ""


@dataclass
class _Site:
    """What a tensor's smoothing touches: reader weights (rows ×s) and producer constants (÷s)."""

    readers: list[onnx.NodeProto]
    weights: list[_Edit]
    producer: str
    producer_node: str
    folds: list[_Edit]


def _all_nodes(graph: onnx.GraphProto):
    """Every node, subgraphs (If/Loop bodies) included: they may read outer tensors too."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _reads(graph: onnx.GraphProto, boundary: bool = True) -> Counter:
    """How often each name is read by nodes (and, with `boundary`, by graph outputs and by graph
    inputs of the same name, which may override an initializer): readers outside any group."""
    uses = Counter(name for node in _all_nodes(graph) for name in node.input if name)
    if boundary:
        uses.update(v.name for v in list(graph.output) + list(graph.input))
    return uses


def inspect_site(graph: onnx.GraphProto, tensor: str) -> _Site | str:
    """The site where `tensor` can be smoothed, or why it cannot (a one-line reason)."""
    inits = {i.name: i for i in graph.initializer}
    uses = _reads(graph)

    def shape(name: str) -> tuple[int, ...] | None:  # of a float32 initializer (Constant nodes are not folded)
        init = inits.get(name)
        return tuple(init.dims) if init is not None and init.data_type == onnx.TensorProto.FLOAT else None

    readers = [n for n in graph.node if tensor in n.input]
    if any(o.name == tensor for o in graph.output):
        return "is a graph output"
    if any(i.name == tensor for i in graph.input):
        return "is a graph input (nothing to fold the factors into)"
    if _reads(graph, boundary=False)[tensor] != sum(list(n.input).count(tensor) for n in readers):
        return "read inside a subgraph"
    weights: list[_Edit] = []
    for node in readers:
        w = shape(node.input[1]) if len(node.input) > 1 else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in ("MatMul", "Gemm") or list(node.input).count(tensor) != 1 or node.input[0] != tensor:
            return f"also read by {node.op_type} {node.name!r}, which cannot compensate the factors"
        if w is None or len(w) < 2:
            return f"reader {node.name!r} has no constant float32 weight (activation × activation)"
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            return f"Gemm {node.name!r} has transA=1 (x's channels are not its last axis)"
        axis = 1 if node.op_type == "Gemm" and attrs.get("transB", 0) else len(w) - 2
        weights.append((node, 1, axis, 1))
    sizes = {e[0].input[1]: shape(e[0].input[1])[e[2]] for e in weights}
    if len(set(sizes.values())) != 1:
        return f"readers' weights disagree on the channel count: {sizes}"
    k = next(iter(sizes.values()))

    def fits(name: str, ndim: int = 1) -> bool:  # a constant whose last axis is x's channels
        dims = shape(name)
        return dims is not None and len(dims) >= ndim and dims[-1] == k

    prod = next((n for n in graph.node if tensor in n.output), None)
    if prod is None:
        return "not produced by a node (nothing to fold the factors into)"
    if prod.op_type == "LayerNormalization" and prod.output[0] == tensor:
        folds = [(prod, i, -1, -1) for i in (1, 2) if len(prod.input) > i and prod.input[i]]
        if all(fits(prod.input[i]) for _, i, _, _ in folds):
            return _Site(readers, weights, "LayerNormalization", prod.name, folds)
        return f"LayerNormalization {prod.name!r} has no constant per-channel scale/bias of size {k}"
    kind, add = "MatMul", None
    if prod.op_type == "Add":
        add = prod
        bias = [i for i in (0, 1) if fits(prod.input[i])]
        other = [n for n in graph.node if prod.input[1 - bias[0]] in n.output] if len(bias) == 1 else []
        if not other or other[0].op_type != "MatMul" or uses[other[0].output[0]] != 1:
            return f"produced by Add {prod.name!r}, which is not a Linear's bias add"
        kind, prod = "MatMul+Add", other[0]
    if prod.op_type != "MatMul":
        return f"produced by {prod.op_type} {prod.name!r}, which cannot absorb the factors"
    if len(prod.input) < 2 or not fits(prod.input[1], ndim=2):
        return f"produced by MatMul {prod.name!r} without a constant weight of {k} columns"
    folds = [(prod, 1, -1, -1)] + ([(add, bias[0], -1, -1)] if add is not None else [])
    return _Site(readers, weights, kind, prod.name, folds)


def smoothing_factors(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_k = a_k^alpha / w_k^(1-alpha), at least MIN_FACTOR; 1 where a channel has no range (a or w is 0)."""
    a, w = np.asarray(act_absmax, np.float64), np.asarray(weight_absmax, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = np.maximum(a**alpha / w ** (1.0 - alpha), MIN_FACTOR)
    return np.where((a > 0) & (w > 0) & np.isfinite(s), s, 1.0)


def smoothing_groups(model: onnx.ModelProto, resolved: ResolvedPlan,
                     folded: frozenset[str] = frozenset()) -> tuple[list[SmoothGroup], list[dict]]:
    """The tensors the plan smooths, and the skipped ones as ``{tensor, layers, reason}``.

    `folded`: LayerNorm outputs whose affine `norm_folding` moved into their readers; smoothing them
    would give those LayerNorms an affine again, so they are skipped.
    """
    quant_nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    if [(n.name, n.op_type) for n in quant_nodes] != [(la.node, la.op_type) for la in resolved.layers]:
        raise ValueError("the plan was resolved on another graph (its layers do not match this model's nodes)")
    layer_of = {n.output[0]: la for n, la in zip(quant_nodes, resolved.layers)}  # outputs are unique
    wanted: dict[str, list] = {}  # tensor -> layers asking for smoothing, in graph order
    skipped: list[dict] = []
    for node, layer in zip(quant_nodes, resolved.layers):
        if resolved.spec(layer).smoothing is None:
            continue
        if node.op_type == "Conv":  # the patch embedding reads the image itself
            skipped.append({"tensor": node.input[0], "layers": [layer.name], "reason": "Conv input: not smoothed"})
        else:
            wanted.setdefault(node.input[0], []).append(layer)
    groups: list[SmoothGroup] = []
    for tensor, asking in wanted.items():
        names = [la.name for la in asking]
        if tensor in folded:
            skipped.append({"tensor": tensor, "layers": names, "reason": "its LayerNorm is folded (fold_norm)"})
            continue
        site = inspect_site(model.graph, tensor)
        if isinstance(site, str):
            skipped.append({"tensor": tensor, "layers": names, "reason": site})
            continue
        readers = [layer_of[n.output[0]] for n in site.readers]
        alphas = [resolved.spec(la).smoothing for la in readers]
        if None in alphas:
            off = [la.name for la, a in zip(readers, alphas) if a is None]
            skipped.append({"tensor": tensor, "layers": names, "reason": f"also read by {', '.join(off)}, which "
                            "the plan does not smooth (their weights would change too: give them smoothing)"})
            continue
        note = "" if len(set(alphas)) == 1 else f"readers ask for alphas {alphas}: using the first, {alphas[0]}"
        groups.append(SmoothGroup(tensor, [la.name for la in readers], [n.name for n in site.readers],
                                  float(alphas[0]), site.producer, site.producer_node, note))
    return groups, skipped


def _along(arr: np.ndarray, s: np.ndarray, axis: int, power: int) -> np.ndarray:
    shape = [1] * arr.ndim
    shape[axis] = -1
    return (arr * s.reshape(shape) ** power).astype(arr.dtype)


def _rows_absmax(arr: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(arr, axis, 0)).reshape(arr.shape[axis], -1).max(axis=1)


def _ratio(v: np.ndarray) -> float | None:
    """max/median channel range: how much the largest channel dominates a per-tensor int8 scale."""
    med = float(np.median(v))
    return float(v.max()) / med if med > 0 else None


def apply_smoothing(model: onnx.ModelProto, groups: list[SmoothGroup],
                    absmax: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[dict]]:
    """A copy of `model` with each group's factors folded in, and one report row per group.

    `absmax` is per-channel max |x| of each group's tensor on the ORIGINAL model (`channel_absmax`);
    it stays valid while groups are applied one after another, because each group leaves every
    other tensor unchanged. Weights are read as already changed by earlier groups (a Linear can be
    one group's reader and the next group's producer: rows and columns scale independently).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph, rows = out.graph, []
    for group in groups:
        site = inspect_site(graph, group.tensor)
        if isinstance(site, str) or [n.name for n in site.readers] != group.nodes:
            why = site if isinstance(site, str) else f"its readers are {[n.name for n in site.readers]}"
            raise ValueError(f"group {group.tensor!r} does not fit this model: {why}")
        inits = {i.name: i for i in graph.initializer}
        arrays = {e[0].input[e[1]]: numpy_helper.to_array(inits[e[0].input[e[1]]]) for e in site.weights + site.folds}
        w_before = np.max([_rows_absmax(arrays[n.input[1]], ax) for n, _, ax, _ in site.weights], axis=0)
        a = np.asarray(absmax.get(group.tensor, []), np.float64)
        if a.shape != w_before.shape:
            raise ValueError(f"{group.tensor!r}: {a.size} activation channels, weights have {w_before.size}")
        s = smoothing_factors(a, w_before, group.alpha)
        _rescale(graph, site.weights + site.folds, arrays, s)
        rows.append({"tensor": group.tensor, "layers": list(group.layers), "alpha": group.alpha,
                     "producer": group.producer, "producer_node": group.producer_node, "note": group.note,
                     "act_ratio_before": _ratio(a), "act_ratio_after": _ratio(a / s),
                     "weight_ratio_before": _ratio(w_before), "weight_ratio_after": _ratio(w_before * s),
                     "s_max": float(s.max()), "s_min": float(s.min())})
    return out, rows


def _rescale(graph: onnx.GraphProto, edits: list[_Edit], arrays: dict[str, np.ndarray], s: np.ndarray) -> None:
    """Apply `edits`; an initializer with readers outside them is copied, and only the edits rewired."""
    uses, index = _reads(graph), {init.name: i for i, init in enumerate(graph.initializer)}
    taken = set(index) | {o for n in _all_nodes(graph) for o in n.output}
    by_name: dict[str, dict[tuple[int, int], list[_Edit]]] = {}
    for edit in edits:
        by_name.setdefault(edit[0].input[edit[1]], {}).setdefault(edit[2:], []).append(edit)
    for name, transforms in by_name.items():
        for (axis, power), same in transforms.items():
            new = _along(arrays[name], s, axis, power)
            if len(transforms) == 1 and len(same) == uses[name]:  # nobody else reads it: change in place
                graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(new, name))
                continue
            copy, n = f"{name}.smooth", 1
            while copy in taken:
                copy, n = f"{name}.smooth{n}", n + 1
            taken.add(copy)
            graph.initializer.append(numpy_helper.from_array(new, copy))
            for node, i, _, _ in same:
                node.input[i] = copy


def smooth(model: onnx.ModelProto, resolved: ResolvedPlan, images: np.ndarray, image_input: str,
           extra_feeds: dict[str, np.ndarray] | None = None,
           folded: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, dict]:
    """Smooth every tensor the plan asks for: ``(model, {"groups": [report rows], "skipped": [...]})``.

    Without a smoothable group the input model itself comes back, and ONNX Runtime is not run.
    `folded`: see `smoothing_groups`.
    """
    groups, skipped = smoothing_groups(model, resolved, folded)
    if not groups:
        return model, {"groups": [], "skipped": skipped}
    absmax = channel_absmax(model, [g.tensor for g in groups], images, image_input, extra_feeds)
    smoothed, rows = apply_smoothing(model, groups, absmax)
    return smoothed, {"groups": rows, "skipped": skipped}
