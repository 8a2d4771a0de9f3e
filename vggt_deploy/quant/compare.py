"""Per-layer error of a quantized (QDQ) model against its FP32 original, by the plan's layer names.

Like ONNX Runtime's ``qdq_loss_debug`` or Polygraphy's compare, but every MatMul/Gemm/Conv is
named the way plans name it (``blocks.3.attn.q``, see `graph.layers`). Both models run on the
same images, one image at a time; per layer we accumulate (float64, so memory stays one image):

- the **global** error of its output: SQNR in dB = 10·log10(Σx² / Σ(x−y)²) (inf when identical),
  relative L2 error ‖x−y‖/‖x‖ and max |x−y|, where x is FP32 and y the QDQ model's value;
- the **local** error of a quantized layer: the layer alone (its Q/DQ nodes and itself, copied out of
  the QDQ graph) fed the FP32 values of its inputs. A layer with a poor global but good local
  SQNR only inherits error from upstream; a poor local SQNR means the layer itself is hurt.

`output_agreement` compares the graph outputs only (cosine, Pearson r, max abs, relative L2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import QUANT_OPS, find_layers
from vggt_deploy.graph.onnx_io import get_metadata
from vggt_deploy.quant.activation_stats import iterate_activations

PRECISIONS_KEY = "vggt.layer_precisions"
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")
# Quantized forms that replace a layer by one node the local model can re-run on FP32 inputs.
LOCAL_OPS = (*QUANT_OPS, "DynamicQuantizeMatMul", "MatMulNBits")


@dataclass
class _Err:
    """Streaming Σx², Σ(x−y)² and max |x−y| of a reference x and an approximation y."""

    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    def add(self, x: np.ndarray, y: np.ndarray, what: str) -> None:
        if x.shape != y.shape:
            raise UserError(f"{what}: shape {list(x.shape)} in the FP32 model but {list(y.shape)} in the QDQ "
                            "model; are they the same model?")
        x, d = x.astype(np.float64), x.astype(np.float64) - y
        self.signal += float(np.sum(x * x))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d), initial=0.0)))

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def rel_l2(self) -> float:
        if self.signal == 0:
            return 0.0 if self.noise == 0 else math.inf
        return math.sqrt(self.noise / self.signal)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two flattened outputs; a constant output correlates 1 with an equal one, else 0."""
    xc, yc = x.ravel().astype(np.float64), y.ravel().astype(np.float64)
    xc, yc = xc - xc.mean(), yc - yc.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denom == 0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return min(1.0, max(-1.0, float(xc @ yc) / denom))


class _OutputAgreement:
    """End-to-end agreement of each graph output, accumulated image by image."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.err = {n: _Err() for n in names}
        self.dot = dict.fromkeys(names, 0.0)
        self.norm_y = dict.fromkeys(names, 0.0)
        self.pearson: dict[str, list[float]] = {n: [] for n in names}

    def add(self, fp32: dict[str, np.ndarray], qdq: dict[str, np.ndarray]) -> None:
        for n in self.names:
            x, y = fp32[n], qdq[n]
            self.err[n].add(x, y, f"output {n!r}")
            self.dot[n] += float(np.sum(x.astype(np.float64) * y))
            self.norm_y[n] += float(np.sum(y.astype(np.float64) ** 2))
            self.pearson[n].append(_pearson(x, y))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for n in self.names:
            e, denom = self.err[n], math.sqrt(self.err[n].signal * self.norm_y[n])
            cosine = self.dot[n] / denom if denom else (1.0 if e.noise == 0 else 0.0)
            out[n] = {"cosine": cosine, "pearson_mean": float(np.mean(self.pearson[n])),
                      "pearson_min": min(self.pearson[n]), "max_abs": e.max_abs, "rel_l2": e.rel_l2()}
        return out


def _paired(fp32: onnx.ModelProto, qdq: onnx.ModelProto, t32: list[str], tq: list[str], images: np.ndarray,
            image_input: str, extra_feeds: dict[str, np.ndarray] | None) -> Iterator[tuple[dict, dict]]:
    """Both models' values image by image (zipped generators: one image's activations in memory)."""
    if len(images) == 0:
        raise UserError("no images to compare on")
    yield from zip(iterate_activations(fp32, t32, images, image_input, extra_feeds, desc="FP32"),
                   iterate_activations(qdq, tq, images, image_input, extra_feeds, desc="QDQ"))


def output_agreement(fp32: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray, image_input: str,
                     extra_feeds: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """{output: {cosine, pearson_mean, pearson_min, max_abs, rel_l2}} of the QDQ model against FP32.

    cosine and rel_l2 are over all images together; Pearson r is per image (flattened), its mean
    and its worst (lowest) value. `images` is (N, 3, H, W) float32, run at batch 1.
    """
    agree = _OutputAgreement([o.name for o in fp32.graph.output])
    for a, b in _paired(fp32, qdq, [], [], images, image_input, extra_feeds):
        agree.add(a, b)
    return agree.summary()


@dataclass
class LayerError:
    name: str  # plan name (blocks.3.attn.q)
    node: str  # FP32 node name
    op_type: str
    precision: str  # int8/int4/... when quantized, else fp32/fp16/bf16
    quantized: bool
    sqnr_db: float
    rel_l2: float
    max_abs: float
    local_sqnr_db: float | None = None  # None: float layer, or its local error cannot be computed
    local_rel_l2: float | None = None


@dataclass
class CompareResult:
    layers: list[LayerError]  # ranked by SQNR, worst first
    outputs: dict[str, dict[str, float]]  # see output_agreement
    num_images: int
    not_found: list[str] = field(default_factory=list)  # FP32 layers with no counterpart in the QDQ graph
    graph_order: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain JSON; infinities (identical tensors) are written as the strings "inf" / "-inf"."""
        def num(v):
            return v if v is None or math.isfinite(v) else ("inf" if v > 0 else "-inf")

        layers = [{"rank": i, **{k: num(v) if isinstance(v, float) else v for k, v in asdict(l).items()}}
                  for i, l in enumerate(self.layers, 1)]
        outputs = {n: {k: num(v) for k, v in d.items()} for n, d in self.outputs.items()}
        return {"num_images": self.num_images, "layers": layers, "outputs": outputs, "not_found": self.not_found,
                "graph_order": self.graph_order}


def _find_qdq(layer_node: onnx.NodeProto, qdq: onnx.ModelProto, producer: dict) -> tuple[onnx.NodeProto, str] | None:
    """The QDQ graph's node for a layer and the tensor to compare: same output name first, then node name."""
    out = layer_node.output[0]
    node = producer.get(out)
    if node is not None and node.op_type == "DequantizeLinear":
        # The quantizer put a Q/DQ pair on the layer's output (and renamed the layer's own output):
        # look through it, so the layer is compared before that extra rounding.
        q = producer.get(node.input[0])
        inner = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if inner is not None and inner.op_type == layer_node.op_type:
            return inner, q.input[0]
    if node is not None:
        return node, out
    node = next((n for n in qdq.graph.node if n.name == layer_node.name), None)
    return (node, node.output[0]) if node is not None else None


def _is_quantized(node: onnx.NodeProto, producer: dict) -> bool:
    # A layer whose output another op produces was replaced by the quantizer (DynamicQuantizeMatMul,
    # MatMulNBits, the Mul that ends a MatMulInteger chain). A kept one is quantized when both its operands
    # are DQ outputs: one dequantized input alone (a quantized upstream output) still computes in float.
    if node.op_type not in QUANT_OPS:
        return True
    return all(i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input[:2])


def _precision(requested: str | None, node: onnx.NodeProto, quantized: bool) -> str:
    """The plan's precision from the metadata when the graph agrees with it; the graph wins otherwise
    (attention matmuls a plan marks int8 may stay float, for instance)."""
    if requested is not None and (requested not in FLOAT_PRECISIONS) == quantized:
        return requested
    if not quantized:
        return "fp32"
    bits = next((a.i for a in node.attribute if a.name == "bits"), 8)
    return f"int{bits}"


def _local_model(qdq: onnx.ModelProto, nodes: dict[str, onnx.NodeProto], producer: dict,
                 fp32_tensors: set[str]) -> tuple[onnx.ModelProto, dict[str, str]] | None:
    """One model holding, per quantized layer, its node with the Q/DQ nodes right before it, whose
    float inputs become graph inputs (fed FP32 values). Returns it and {layer: its output there}."""
    inits = {t.name: t for t in qdq.graph.initializer}
    graph_nodes, inputs, used_inits, outputs = [], [], {}, {}
    for k, (name, node) in enumerate(nodes.items()):
        if node.op_type not in LOCAL_OPS:
            continue
        part = []
        for i in node.input:
            dq = producer.get(i)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                part += [q, dq] if q is not None and q.op_type == "QuantizeLinear" else [dq]
        part.append(node)
        made = {o for n in part for o in n.output}
        frontier = [i for n in part for i in n.input if i and i not in made]
        if any(t not in inits and t not in fp32_tensors for t in frontier):
            continue  # reads a tensor the FP32 model has no value for: no local error for this layer
        rename = {o: f"local{k}/{o}" for o in made}  # prefixed: layers may share Q/DQ tensor names
        for n in part:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"local{k}/{n.name}"
            copy.input[:] = [rename.get(i, i) for i in n.input]
            copy.output[:] = [rename[o] for o in n.output]
            graph_nodes.append(copy)
        for t in frontier:
            if t in inits:
                used_inits[t] = inits[t]
            elif t not in inputs:
                inputs.append(t)
        outputs[name] = rename[node.output[0]]
    if not outputs:
        return None
    graph = onnx.helper.make_graph(
        graph_nodes, "local", [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in inputs],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs.values()],
        list(used_inits.values()))
    model = onnx.helper.make_model(graph, opset_imports=list(qdq.opset_import))
    model.ir_version = qdq.ir_version
    return model, outputs


def compare_models(fp32: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray, image_input: str,
                   extra_feeds: dict[str, np.ndarray] | None = None) -> CompareResult:
    """Per-layer global and local error of `qdq` against `fp32` on `images` (N, 3, H, W), plus
    `output_agreement`'s end-to-end numbers. See the module docstring for the definitions."""
    layers = find_layers(fp32)
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    try:
        requested = json.loads(get_metadata(qdq).get(PRECISIONS_KEY, "{}"))
    except ValueError:
        requested = {}
    requested = requested if isinstance(requested, dict) else {}
    found, not_found = {}, []
    for layer in layers:
        match = _find_qdq(fp32_nodes[layer.node], qdq, producer)
        if match is None:
            not_found.append(layer.name)
        else:
            found[layer.name] = (layer, fp32_nodes[layer.node].output[0], *match)
    quantized = {name: _is_quantized(node, producer) for name, (_, _, node, _) in found.items()}
    given = {*(extra_feeds or {}), image_input}  # graph inputs: their values come from the feeds
    init_names = {t.name for t in fp32.graph.initializer}
    local = _local_model(qdq, {n: f[2] for n, f in found.items() if quantized[n]}, producer,
                         {o for n in fp32.graph.node for o in n.output} | given | init_names)
    local_inputs = [i.name for i in local[0].graph.input] if local else []
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer if t.name in local_inputs}
    t32 = [f[1] for f in found.values()] + [t for t in local_inputs if t not in given and t not in init_names]
    session = make_session(local[0].SerializeToString(), optimize=False) if local else None
    glob = {n: _Err() for n in found}
    loc = {n: _Err() for n in (local[1] if local else {})}
    agree = _OutputAgreement([o.name for o in fp32.graph.output])
    for i, (a, b) in enumerate(_paired(fp32, qdq, t32, [f[3] for f in found.values()], images, image_input,
                                       extra_feeds)):
        agree.add(a, b)
        for name, (_, out32, _, outq) in found.items():
            glob[name].add(a[out32], b[outq], f"layer {name}")
        if session is not None:
            values = {**consts, **(extra_feeds or {}), image_input: images[i : i + 1], **a}
            run = {t: values[t] for t in local_inputs}
            for name, y in zip(local[1], session.run(list(local[1].values()), run)):
                loc[name].add(a[found[name][1]], np.asarray(y, np.float32), f"layer {name} (local)")
    rows = []
    for name, (layer, _, node, _) in found.items():
        e, le = glob[name], loc.get(name)
        rows.append(LayerError(name, layer.node, layer.op_type, _precision(requested.get(name), node, quantized[name]),
                               quantized[name], e.sqnr_db(), e.rel_l2(), e.max_abs,
                               le.sqnr_db() if le else None, le.rel_l2() if le else None))
    order = list(found)
    rows.sort(key=lambda r: (r.sqnr_db, order.index(r.name)))
    return CompareResult(rows, agree.summary(), len(images), not_found, order)
