"""`vggt-deploy build-trt`: a QDQ/FP32 ONNX model -> a serialized TensorRT engine (+ sidecar).

Thin on purpose: all decisions are made by `trt_settings.plan_build` (pure,
tested everywhere); this module only calls the TensorRT Python API, following
NVIDIA's documented 10.x/11.x API: Builder.create_network (STRONGLY_TYPED flag),
OnnxParser.parse, IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE),
set_flag(BuilderFlag.*), ILayer.precision, create_optimization_profile /
IOptimizationProfile.set_shape, create_timing_cache / set_timing_cache,
default_device_type = DeviceType.DLA with DLA_core, build_serialized_network.
"""

from __future__ import annotations

import json
from pathlib import Path

from vggt_deploy.backends.tensorrt.loader import gpu_identity, import_tensorrt
from vggt_deploy.backends.tensorrt.pinning import engine_layers_for, missing_layers, parser_node_name
from vggt_deploy.backends.tensorrt.settings import BuildOptions, plan_build
from vggt_deploy.errors import UserError


def layer_precisions(model) -> dict[str, str]:
    """Per-layer precision recorded by the export (`vggt.layer_precisions`; empty for an FP32 graph)."""
    from vggt_deploy.graph.onnx_io import get_metadata

    return json.loads(get_metadata(model).get("vggt.layer_precisions", "{}"))


def _parse(parser, model, engine: Path) -> bool:
    """Hand `model` to TensorRT's ONNX parser: as bytes, or above 2 GB (VGGT-1B in FP32, which protobuf
    cannot serialize in one piece) as a file with external data, written beside the engine and removed."""
    import tempfile

    import onnx

    from vggt_deploy.graph.onnx_io import over_2gb

    if not over_2gb(model):
        return parser.parse(model.SerializeToString())
    engine.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vggt-trt.", dir=engine.parent) as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return parser.parse_from_file(str(path))


def build_engine(onnx_file: Path, engine: Path, options: BuildOptions, timing_cache: Path | None = None,
                 precisions: dict[str, str] | None = None, plan_hash: str | None = None) -> dict:
    """Build and write `engine` and its sidecar; returns the sidecar.

    Args:
        precisions: layer name -> precision, from a plan the caller resolved on this graph
            (`build-trt --plan`); by default the export's own record in the ONNX metadata.
        plan_hash: the hash of that plan, recorded in the sidecar.
    """

    from vggt_deploy.backends.tensorrt.rewrite import to_fp16
    from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
    from vggt_deploy.backends.tensorrt.sidecar import make_sidecar, write_engine
    from vggt_deploy.graph.layers import find_layers
    from vggt_deploy.graph.onnx_io import get_metadata, load_onnx

    model = load_onnx(onnx_file)
    violations = validate_tensorrt(model)
    if violations:
        raise UserError(f"{onnx_file}: breaks TensorRT's rules, not building:\n  " + "\n  ".join(violations))
    trt = import_tensorrt()
    meta = get_metadata(model)
    layers = find_layers(model)
    precisions = precisions if precisions is not None else layer_precisions(model)
    shapes = {i.name: tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
    has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    settings = plan_build(options, trt.__version__, shapes, precisions, {l.name: l.node for l in layers}, has_qdq)
    if settings.fp16_nodes:
        model = to_fp16(model, settings.fp16_nodes)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not _parse(parser, model, engine):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_file}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag in settings.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.fp32_layers:
        # Exactly the layers the parser made from each pinned node (never by name prefix: see pinning.py).
        pinned = [l.node for l in layers if l.name in settings.fp32_layers]
        net_layers = [network.get_layer(i) for i in range(network.num_layers)]
        owners = engine_layers_for([parser_node_name(n) for n in model.graph.node],
                                   [(layer.name, getattr(layer, "metadata", "")) for layer in net_layers])
        missing = missing_layers({node: owners.get(node, []) for node in pinned})
        if missing:
            raise UserError(f"{onnx_file}: cannot pin to fp32: no TensorRT layer came from ONNX node(s) "
                            f"{', '.join(missing)} (TensorRT {trt.__version__})")
        fp32_names = {name for node in pinned for name in owners[node]}
        for layer in net_layers:
            if layer.name in fp32_names:
                layer.precision = trt.float32
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in settings.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_blob), ignore_mismatch=False)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{onnx_file}: TensorRT could not build an engine (see the log above)")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu, cc = gpu_identity()
    plan_hash = plan_hash if plan_hash is not None else meta.get("vggt.plan_hash", "")
    sidecar = make_sidecar(trt.__version__, gpu, cc, onnx_file, plan_hash, {
        "options": options.__dict__, "flags": list(settings.flags), "strongly_typed": settings.strongly_typed,
        "fp16_nodes": len(settings.fp16_nodes), "fp32_layers": list(settings.fp32_layers),
        "profile": {k: [list(s) for s in v] for k, v in settings.profile.items()},
    })
    write_engine(engine, bytes(serialized), sidecar)
    return sidecar
