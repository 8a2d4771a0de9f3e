"""From `build-trt` options and a plan to TensorRT builder settings: pure functions, testable anywhere.

TensorRT 10.x (JetPack 6 ships 10.3) still has weak typing: precision comes
from builder flags (FP16, INT8) plus per-layer constraints
(OBEY_PRECISION_CONSTRAINTS, layer.precision). TensorRT 11.x is strongly
typed only: those flags are gone, so precision must be written into the ONNX
itself (QDQ for int8, Cast + fp16 weights for fp16; see `trt_rewrite`).
References: TensorRT Python API, IBuilderConfig / BuilderFlag / MemoryPoolType /
IOptimizationProfile pages, and "Strongly Typed Networks" in the developer guide
(docs.nvidia.com/deeplearning/tensorrt).
"""

from __future__ import annotations

from dataclasses import dataclass

from vggt_deploy.errors import UserError


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked `build-trt` for."""

    int8: bool = False
    fp16: bool = False
    workspace_mb: int = 1024
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    num_queries: int = 18  # query_embeds rows the engine is built for (the category list)
    dla_core: int | None = None


@dataclass(frozen=True)
class BuildSettings:
    """What the builder will be told; `rewrite_*` are ONNX edits needed first (TensorRT 11)."""

    trt_major: int
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag member names
    fp32_layers: tuple[str, ...]  # layers pinned to fp32 by precision constraints (10.x)
    fp16_nodes: tuple[str, ...]  # ONNX nodes to rewrite to fp16 with casts (11.x)
    workspace_bytes: int
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    dla_core: int | None


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read a TensorRT version from {version!r}") from None


def plan_build(
    options: BuildOptions,
    trt_version: str,
    input_shapes: dict[str, tuple[int | None, ...]],
    layer_precisions: dict[str, str],
    layer_nodes: dict[str, str],
    has_qdq: bool,
) -> BuildSettings:
    """Decide the builder settings, refusing combinations TensorRT cannot honour.

    Args:
        input_shapes: ONNX input shapes with None for dynamic dims (dim 0 is the batch).
        layer_precisions: the plan's precision per layer (from the QDQ model's metadata).
        layer_nodes: layer name -> ONNX node name.
        has_qdq: whether the graph carries QuantizeLinear/DequantizeLinear nodes.
    """
    major = trt_major(trt_version)
    if major < 10:
        raise UserError(f"TensorRT {trt_version} is too old: build-trt supports 10.x and 11.x")
    if options.int8 and not has_qdq:
        raise UserError("--int8 builds from an explicitly quantized (QDQ) model: export one with "
                        "`vggt-deploy export --plan ... --target tensorrt` (implicit calibration is gone in TensorRT 10+)")
    if not options.min_batch <= options.opt_batch <= options.max_batch:
        raise UserError(f"need --min-batch <= --opt-batch <= --max-batch, got {options.min_batch}, "
                        f"{options.opt_batch}, {options.max_batch}")
    if options.dla_core is not None and major >= 11:
        raise UserError("--dla-core: DLA builds are a TensorRT 10.x (JetPack 6) feature")
    strongly_typed = major >= 11
    flags: list[str] = []
    fp16_nodes: list[str] = []
    fp32_layers = tuple(sorted(n for n, p in layer_precisions.items() if p == "fp32"))
    wants_fp16 = options.fp16 or any(p == "fp16" for p in layer_precisions.values())
    if strongly_typed:
        # Everything the plan does not pin to fp32 or quantize runs in fp16 via casts in the ONNX.
        if wants_fp16:
            fp16_nodes = sorted(layer_nodes[n] for n, p in layer_precisions.items()
                                if p == "fp16" or (options.fp16 and p not in ("fp32", "int8", "int4")))
    else:
        if wants_fp16:
            flags.append("FP16")
        if options.int8 or has_qdq:
            flags.append("INT8")
        if fp32_layers and wants_fp16:
            flags.append("OBEY_PRECISION_CONSTRAINTS")
        if options.dla_core is not None:
            flags.append("GPU_FALLBACK")
    profile = {}
    for name, shape in input_shapes.items():
        rest = tuple(shape[1:])
        if any(d is None for d in rest):
            raise UserError(f"input {name!r} has dynamic dims besides the first: {shape}; export with fixed sizes")
        if name == "query_embeds":  # rows are queries, not images: one fixed count per engine
            profile[name] = ((options.num_queries, *rest),) * 3
        else:
            profile[name] = tuple((b, *rest) for b in (options.min_batch, options.opt_batch, options.max_batch))
    return BuildSettings(
        trt_major=major, strongly_typed=strongly_typed, flags=tuple(flags),
        fp32_layers=fp32_layers if not strongly_typed else (), fp16_nodes=tuple(fp16_nodes),
        workspace_bytes=options.workspace_mb << 20, profile=profile, dla_core=options.dla_core,
    )
