"""Rewrite a model whose weights live in an external data file, one tensor at a time.

The streamed VGGT-1B export (4.8 GB of weights) is never simplified as a whole, so one pattern the
exporter leaves is a ``Transpose`` of a weight that several MatMuls share (the camera head's trunk runs
four times): ONNX Runtime and OpenVINO fold it at load, but the quantizer only sees weights that are
initializers, so those Linears could never be int8. `fold_weight_transposes` turns each such weight
into its transposed initializer, copying the data file tensor by tensor: memory stays one tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ALIGN = 4096  # offsets in the data file start on page boundaries, as onnx.save aligns large tensors


def _transposed_weights(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """{2-D initializer: its Transpose nodes} for weights read only by plain 2-D transposes."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, []).append(node)
    out = {}
    for name, nodes in readers.items():
        if len(inits[name].dims) != 2 or name in {o.name for o in graph.output}:
            continue
        if all(n.op_type == "Transpose" and _perm(n) in (None, [1, 0]) for n in nodes):
            out[name] = nodes
    return out


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _location(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def fold_weight_transposes(path: Path) -> int:
    """Fold every ``Transpose(weight)`` of `path` (saved with external data) into a transposed weight.

    The graph and its data file are rewritten in place (both are written beside them first, then
    renamed: a failure leaves the originals). Returns the number of weights folded.
    """
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    folds = _transposed_weights(graph)
    if not folds:
        return 0
    base = path.parent
    files = {_location(t).get("location") for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    if len(files) != 1:
        raise ValueError(f"{path}: expected one external data file, found {sorted(f for f in files if f)}")
    data_name = files.pop()
    tmp_data = base / f".{data_name}.fold"
    tmp_graph = base / f".{path.name}.fold"
    try:
        with open(base / data_name, "rb") as src, open(tmp_data, "wb") as dst:
            for tensor in graph.initializer:
                external = tensor.data_location == onnx.TensorProto.EXTERNAL
                if tensor.name in folds:
                    values = np.ascontiguousarray(numpy_helper.to_array(tensor, base_dir=str(base)).T)
                    raw = values.tobytes()
                    del tensor.dims[:]
                    tensor.dims.extend(values.shape)
                elif external:
                    where = _location(tensor)
                    src.seek(int(where.get("offset", 0)))
                    raw = src.read(int(where["length"]))
                else:
                    continue
                if not external:  # a small weight held in the graph itself
                    tensor.raw_data = raw
                    continue
                offset = -dst.tell() % ALIGN
                dst.write(b"\0" * offset)
                start = dst.tell()
                dst.write(raw)
                del tensor.external_data[:]
                for key, value in (("location", data_name), ("offset", str(start)), ("length", str(len(raw)))):
                    tensor.external_data.add(key=key, value=value)
        for name, nodes in folds.items():
            for transpose in nodes:
                for node in graph.node:
                    for i, inp in enumerate(node.input):
                        if inp == transpose.output[0]:
                            node.input[i] = name
                graph.node.remove(transpose)
        stale = set(folds) | {n.output[0] for nodes in folds.values() for n in nodes}
        for info in [v for v in graph.value_info if v.name in stale]:  # shapes recorded before the fold
            graph.value_info.remove(info)
        onnx.save(model, str(tmp_graph))
        os.replace(tmp_data, base / data_name)
        os.replace(tmp_graph, path)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_graph.unlink(missing_ok=True)
    return len(folds)
