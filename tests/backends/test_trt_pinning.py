"""fp32 pinning finds exactly the TensorRT layers of an ONNX node, never its name-prefix neighbours."""

from types import SimpleNamespace

from vggt_deploy.backends.tensorrt.pinning import (
    engine_layers_for,
    metadata_node,
    missing_layers,
    parser_node_name,
)

# ONNX nodes whose names share prefixes, as the dynamo exporter writes them.
NODES = ["node_conv2d", "node_conv2d_1", "node_conv2d_2", "node_conv2d_3", "node_conv2d_4",
         "node_MatMul_10", "node_MatMul_1", "node_Constant_5"]

# A network as TensorRT's ONNX parser names it: the first layer of a node is named after it, further
# layers of the same node `<node>_<n>` with one parser-wide counter n; helper layers `ONNXTRT_*`;
# unregistered layers `(Unnamed Layer* i) [type]`; constants after their weights; Constant nodes: none.
NETWORK = [
    "node_conv2d", "node_conv2d_17",
    "node_conv2d_1", "node_conv2d_1_18",
    "node_conv2d_2",
    "node_conv2d_3",
    "node_conv2d_4", "node_conv2d_4_19", "node_conv2d_4_23",
    "ONNXTRT_Broadcast", "ONNXTRT_Broadcast_20", "(Unnamed Layer* 14) [Shuffle]", "val_12",
    "node_MatMul_10", "node_MatMul_10_21",
    "node_MatMul_1", "node_MatMul_1_22",
    "node_MatMul_100",  # belongs to no node given (an `node_MatMul` is not in the graph)
]

EXPECTED = {
    "node_conv2d": ["node_conv2d", "node_conv2d_17"],
    "node_conv2d_1": ["node_conv2d_1", "node_conv2d_1_18"],
    "node_conv2d_2": ["node_conv2d_2"],
    "node_conv2d_3": ["node_conv2d_3"],
    "node_conv2d_4": ["node_conv2d_4", "node_conv2d_4_19", "node_conv2d_4_23"],
    "node_MatMul_10": ["node_MatMul_10", "node_MatMul_10_21"],
    "node_MatMul_1": ["node_MatMul_1", "node_MatMul_1_22"],
    "node_Constant_5": [],
}


def test_names_map_exactly_and_prefixes_never_leak():
    mapping = engine_layers_for(NODES, NETWORK)
    assert mapping == EXPECTED
    assert list(mapping) == NODES
    # What the old prefix test would have pinned for node_conv2d: all five convolutions.
    assert sum(name.startswith("node_conv2d") for name in NETWORK) == 9
    assert len(mapping["node_conv2d"]) == 2


def test_a_node_without_layers_is_reported_not_dropped():
    mapping = engine_layers_for(NODES + ["node_gone"], NETWORK)
    assert mapping["node_gone"] == []
    assert missing_layers(mapping) == ["node_Constant_5", "node_gone"]
    assert missing_layers({n: mapping[n] for n in ("node_conv2d", "node_MatMul_1")}) == []


def test_metadata_wins_where_names_are_ambiguous():
    # The parser's counter can hand an auxiliary layer of node_conv2d the name `node_conv2d_1`, which
    # pushes node_conv2d_1's own layer to `node_conv2d_1_2`; only the metadata tells them apart.
    network = [
        ("node_conv2d", "[ONNX Layer: node_conv2d]"),
        ("node_conv2d_1", "[ONNX Layer: node_conv2d]"),
        ("node_conv2d_1_2", "[ONNX Layer: node_conv2d_1]"),
        ("node_conv2d_2", "[ONNX Layer: node_conv2d_2]"),
        ("node_MatMul_10", "[ONNX Layer: node_MatMul_10 | Local Function: attention]"),
        ("node_MatMul_1", "[ONNX Layer: node_MatMul_1]"),
        ("node_MatMul_1_3", "[ONNX Layer: node_MatMul_1]"),
        ("val_7", ""),  # constants carry no metadata
        ("ONNXTRT_Broadcast", None),
    ]
    mapping = engine_layers_for(["node_conv2d", "node_conv2d_1", "node_conv2d_2", "node_conv2d_3",
                                 "node_MatMul_10", "node_MatMul_1"], network)
    assert mapping == {
        "node_conv2d": ["node_conv2d", "node_conv2d_1"],
        "node_conv2d_1": ["node_conv2d_1_2"],
        "node_conv2d_2": ["node_conv2d_2"],
        "node_conv2d_3": [],
        "node_MatMul_10": ["node_MatMul_10"],
        "node_MatMul_1": ["node_MatMul_1", "node_MatMul_1_3"],
    }
    assert missing_layers(mapping) == ["node_conv2d_3"]


def test_metadata_and_parser_node_names():
    assert metadata_node("[ONNX Layer: /blocks.0/attn/MatMul_1]") == "/blocks.0/attn/MatMul_1"
    assert metadata_node("[ONNX Layer: node_x | Local Function: f]") == "node_x"
    assert metadata_node("") is None and metadata_node(None) is None and metadata_node("other") is None
    assert parser_node_name(SimpleNamespace(name="node_conv2d", output=["val_1"])) == "node_conv2d"
    assert parser_node_name(SimpleNamespace(name="", output=["val_1"])) == "node_of_val_1"
