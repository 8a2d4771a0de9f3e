"""`heads_first`: one exact OpenVINO rewrite of fused q/k/v projections with per-head q/k LayerNorms.

After `fuse_sibling_matmuls`, an attention block reads one FullyConnected (B, T, 3C) through a Split
into q, k and v, and each goes its own way::

    q: Reshape (B, T*nh, hs) -> LayerNorm -> Reshape (B, T, nh, hs) -> Transpose (0, 2, 1, 3) -> Q·Kᵀ
    k: Reshape (B, T*nh, hs) -> LayerNorm -> Reshape (B, T, nh, hs) -> Transpose (0, 2, 3, 1) -> Q·Kᵀ
    v: Reshape (B, T, nh, hs) -> Transpose (0, 2, 1, 3) -> attention·V

OpenVINO runs that as a Split copy, two MVNs, the query's affine and the key's transpose, outside its
fused attention node. Here the heads move to the front once, for all three::

    Reshape (B, T, 3nh, hs) -> Transpose (0, 2, 1, 3) -> Split on axis 1 [2nh, nh] -> qk, v
    qk: Reshape (B, 2nh*T, hs) -> LayerNorm (no affine) -> Reshape (B, 2nh, T, hs)
        -> Mul, Add (each head slot's own affine: the query's for q, the key's for k) -> Split [nh, nh]

and Q·Kᵀ reads q and Transpose(k, (0, 1, 3, 2)), which OpenVINO folds into the MatMul. Both Splits
cut the outermost non-unit axis, so OpenVINO does them in place: no copy. One transpose, one MVN and
one affine remain. Every row is normalised over the same hs values with the same epsilon as before, and
each head slot gets its own affine, so the function is unchanged. Where only q and k were fused (v has
its own projection: the grounding layers' self-attention) the same holds without the first Split.

Measured on the shipped plan: 9 attentions (6 backbone blocks, 3 grounding self-attentions), 271 nodes
executed instead of 282, 1.007x to 1.022x faster (alternating rounds, 200 each, OpenVINO 2026.4, bf16,
2 threads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from vggt_deploy.backends.openvino.onnx_graph import GraphIndex, attr, norm_affine


@dataclass
class _Branch:
    """The nodes one Split output runs through, up to the attention MatMul that reads it."""

    nodes: list[onnx.NodeProto]
    matmul: onnx.NodeProto
    norm: onnx.NodeProto | None = None


def _chain(g: GraphIndex, name: str, ops: tuple[str, ...]) -> list[onnx.NodeProto] | None:
    """The nodes reading `name` one after another with the given op types, each the sole reader."""
    nodes = []
    for op in ops:
        node = g.sole_user(name)
        if node is None or node.op_type != op or node.input[0] != name:
            return None
        nodes.append(node)
        name = node.output[0]
    return nodes


def _shape(g: GraphIndex, reshape: onnx.NodeProto) -> list[int] | None:
    """A Reshape's constant target shape; None unless 0 means "copy that axis" (the default)."""
    value = g.const(reshape.input[1]) if len(reshape.input) > 1 else None
    if value is None or value.ndim != 1 or (attr(reshape, "allowzero", 0) and 0 in value):
        return None
    return [int(v) for v in value]


def _branch(g: GraphIndex, name: str, normed: bool, perm: list[int], operand: int) -> _Branch | None:
    ops = ("Reshape", "LayerNormalization", "Reshape", "Transpose") if normed else ("Reshape", "Transpose")
    nodes = _chain(g, name, ops)
    if nodes is None or list(attr(nodes[-1], "perm", [])) != perm:
        return None
    matmul = g.sole_user(nodes[-1].output[0])
    if matmul is None or matmul.op_type != "MatMul" or list(matmul.input).index(nodes[-1].output[0]) != operand:
        return None
    norm = nodes[1] if normed else None
    if norm is not None and (attr(norm, "axis", -1) != -1 or any(norm.output[1:])):
        return None
    return _Branch(nodes, matmul, norm)


def _affine(g: GraphIndex, norm: onnx.NodeProto, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    affine = norm_affine(g, norm)
    if affine is None or affine[0].shape != (width,) or any(a.dtype != np.float32 for a in affine):
        return None
    return affine


def heads_first(g: GraphIndex) -> int:
    """Rewrite each fused q/k(/v) Split with per-head q/k LayerNorms as above; returns how many."""
    done = 0
    for split in list(g.graph.node):
        if split.op_type == "Split" and len(split.output) in (2, 3) and attr(split, "axis", 0) in (-1, 2):
            done += _rewrite(g, split)
    if done:
        g.relink()
    return done


def _match(g: GraphIndex, split: onnx.NodeProto) -> tuple[_Branch, _Branch, _Branch | None, list[int]] | None:
    """The q, k and (with three outputs) v branches of `split`, and the (B, T, nh, hs) shape of its heads,
    when the rewrite is exact."""
    widths = g.const(split.input[1]) if len(split.input) > 1 and split.input[1] else None
    q = _branch(g, split.output[0], True, [0, 2, 1, 3], 0)
    k = _branch(g, split.output[1], True, [0, 2, 3, 1], 1)
    v = _branch(g, split.output[2], False, [0, 2, 1, 3], 1) if len(split.output) == 3 else None
    if widths is None or len(set(widths.tolist())) != 1 or None in (q, k) or q.matmul is not k.matmul:
        return None
    if len(split.output) == 3 and v is None:
        return None
    shapes = [_shape(g, n) for n in (q.nodes[0], k.nodes[0], q.nodes[2], k.nodes[2], *(v.nodes[:1] if v else []))]
    if None in shapes or any(s != shapes[2] for s in shapes[3:]) or len(shapes[2]) != 4:
        return None
    flat_q, flat_k, heads = shapes[0], shapes[1], shapes[2]
    nh, hs = heads[2], heads[3]
    # Each flat view must cut rows of hs (one head of one token); which rows go where does not matter.
    if min(nh, hs) <= 0 or nh * hs != int(widths[0]) or flat_q[-1] != hs or flat_k[-1] != hs:
        return None
    if attr(q.norm, "epsilon", 1e-5) != attr(k.norm, "epsilon", 1e-5):
        return None
    return q, k, v, heads


def _rewrite(g: GraphIndex, split: onnx.NodeProto) -> int:
    found = _match(g, split)
    affines = [_affine(g, found[0].norm, found[3][3]), _affine(g, found[1].norm, found[3][3])] if found else []
    if not found or None in affines:
        return 0
    q, k, v, (b, t, nh, hs) = found
    (gq, bq), (gk, bk) = affines
    base = (split.name or split.output[0]) + "_hf"

    def const(suffix: str, value: np.ndarray) -> str:
        return g.add_init(f"{base}_{suffix}", value)

    def shape(*dims: int) -> str:
        return const("shape", np.array(dims, np.int64))

    def slots(a: np.ndarray, c: np.ndarray) -> np.ndarray:  # (2nh, 1, hs): q's value on q heads, k's on k heads
        return np.concatenate([np.broadcast_to(a, (nh, 1, hs)), np.broadcast_to(c, (nh, 1, hs))]).astype(np.float32)

    y4, yt, qk, flat, normed, heads, scaled, affine, k_out, kt = (g.fresh(f"{base}_{s}") for s in (
        "y4", "heads_first", "qk", "qk_flat", "qk_norm", "qk_heads", "qk_scaled", "qk_affine", "k", "kT"))
    make = onnx.helper.make_node
    slots_in = 3 if v is not None else 2
    new = [
        make("Reshape", [split.input[0], shape(b, t, slots_in * nh, hs)], [y4], name=y4),
        make("Transpose", [y4], [yt if v is not None else qk], perm=[0, 2, 1, 3], name=yt),
    ]
    if v is not None:
        new.append(make("Split", [yt, const("widths", np.array([2 * nh, nh], np.int64))], [qk, v.nodes[-1].output[0]],
                        axis=1, name=qk))
    new += [
        make("Reshape", [qk, shape(0, -1, hs)], [flat], name=flat),
        make("LayerNormalization", [flat, const("unit", np.ones(hs, np.float32))], [normed], axis=-1,
             epsilon=attr(q.norm, "epsilon", 1e-5), name=normed),
        make("Reshape", [normed, shape(0, 2 * nh, -1, hs)], [heads], name=heads),
        make("Mul", [heads, const("scale", slots(gq, gk))], [scaled], name=scaled),
        make("Add", [scaled, const("shift", slots(bq, bk))], [affine], name=affine),
        make("Split", [affine, const("widths", np.array([nh, nh], np.int64))], [q.nodes[-1].output[0], k_out],
             axis=1, name=g.fresh(f"{base}_split")),
        make("Transpose", [k_out], [kt], perm=[0, 1, 3, 2], name=kt),
    ]
    q.matmul.input[1] = kt
    at = list(g.graph.node).index(split)
    for node in [split, *q.nodes, *k.nodes, *(v.nodes if v is not None else [])]:
        g.graph.node.remove(node)
    for offset, node in enumerate(new):
        g.graph.node.insert(at + offset, node)
    return 1
