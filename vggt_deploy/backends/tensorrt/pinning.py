"""Which TensorRT network layers came from which ONNX node (pure; no tensorrt import).

Precision pinning (`build.py`) must touch exactly the layers of the pinned ONNX nodes. Matching
layer names by prefix is wrong: ``node_conv2d`` is a prefix of ``node_conv2d_1``, so pinning one
pins its neighbours. The rules below follow TensorRT's ONNX parser (onnx/onnx-tensorrt):

* ``ImporterContext::registerLayer(layer, node)`` names a layer after ``getNodeName(node)``: the
  node's ``name``, or ``node_of_<first output>`` when the name is empty (``importerUtils.cpp``).
* The name is made unique by ``generateUniqueName``: the base name itself when it is still free,
  else ``<base>_<n>``, where ``n`` is one parser-wide counter shared by all tensors and layers
  (``importerUtils.cpp``; earlier ``ImporterContext.hpp``). So when one node becomes several
  layers, the first is named ``<node>`` and the others ``<node>_<n>``, with arbitrary ``n``.
* Since TensorRT 8.6 the parser also writes ``[ONNX Layer: <node>]`` (``[ONNX Layer: <node> |
  Local Function: <f>]`` inside local functions) into ``ILayer.metadata`` of every non-constant
  layer it registers for a node (``processMetadata`` in ``importerUtils.cpp``; onnx-tensorrt
  changelog, 8.6 EA: "ONNX node metadata will be embedded into TensorRT layers").
* Helper layers registered without a node get ``ONNXTRT_*`` names and no metadata; layers nobody
  registered keep TensorRT's ``(Unnamed Layer* <i>) [<type>]``. Neither belongs to a node.

The metadata is exact, so it is used whenever the network carries it. Names alone are used only
for networks without metadata: a layer named exactly like an ONNX node is that node's; a layer
named ``<node>_<digits>`` that is not itself an ONNX node's name is an auxiliary layer of
``<node>`` (one suffix only: the parser always appends to the base name). A name-only network
where an auxiliary layer's generated name equals another node's name cannot be told apart; that
is why the metadata wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)(?: \| [^\]]*)?\]")
_AUX_SUFFIX = re.compile(r"(.+)_\d+")


def metadata_node(metadata: str | None) -> str | None:
    """The ONNX node named in a layer's metadata (``[ONNX Layer: <node> | ...]``), or None."""
    if not metadata:
        return None
    found = _ONNX_LAYER.search(metadata)
    return found.group(1) if found else None


def parser_node_name(node) -> str:
    """The name TensorRT's parser gives an ONNX node (``getNodeName``): its name, else ``node_of_<output 0>``."""
    if node.name or not node.output:
        return node.name
    return f"node_of_{node.output[0]}"


def engine_layers_for(onnx_nodes: Iterable[str],
                      engine_layers: Iterable[str | tuple[str, str | None]]) -> dict[str, list[str]]:
    """Map each ONNX node to the TensorRT network layers the ONNX parser made from it.

    Args:
        onnx_nodes: the names of ALL the graph's nodes as the parser sees them (`parser_node_name`),
            not only the ones of interest: a name-only network needs them to tell the layer of node
            ``node_conv2d_1`` from an auxiliary layer ``node_conv2d_1`` of ``node_conv2d``.
        engine_layers: the network's layers in order, each a layer name or a ``(name, metadata)``
            pair (``ILayer.name``, ``ILayer.metadata``). When any layer carries ``[ONNX Layer: ...]``
            metadata, the metadata alone decides; otherwise the names do (see the module doc).

    Returns:
        ``{node: [layer names]}`` for every node given, in the order given; a node that no layer
        came from maps to ``[]`` (see `missing_layers`), never silently dropped.
    """
    nodes = list(dict.fromkeys(onnx_nodes))
    result: dict[str, list[str]] = {node: [] for node in nodes}
    layers = [(item, None) if isinstance(item, str) else (item[0], item[1]) for item in engine_layers]
    owners = [metadata_node(meta) for _, meta in layers]
    if any(owner is not None for owner in owners):
        for (name, _), owner in zip(layers, owners):
            if owner in result:
                result[owner].append(name)
        return result
    wanted = set(nodes)
    for name, _ in layers:
        owner = name if name in wanted else None
        if owner is None:
            aux = _AUX_SUFFIX.fullmatch(name)
            if aux and aux.group(1) in wanted:
                owner = aux.group(1)
        if owner is not None:
            result[owner].append(name)
    return result


def missing_layers(mapping: dict[str, list[str]]) -> list[str]:
    """The nodes of an `engine_layers_for` result that no layer came from."""
    return [node for node, layers in mapping.items() if not layers]
