"""From `build-ov` / runner options to OpenVINO CPU properties: pure, no openvino import, testable anywhere.

The properties are OpenVINO's string names, which `core.compile_model(model, "CPU", config)`
accepts as they are (OpenVINO docs, "Performance Hints" and "CPU Device": PERFORMANCE_HINT,
INFERENCE_PRECISION_HINT, INFERENCE_NUM_THREADS, NUM_STREAMS). A latency hint gets one stream
unless told otherwise, so one request uses every thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from vggt_deploy.errors import UserError

PRECISIONS = ("f32", "bf16")  # of the float parts; QDQ layers run in int8 either way
HINTS = ("latency", "throughput")


def _count(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"OpenVINO {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class OvOptions:
    """What the user asked OpenVINO for; None precision means `default_precision()` of this CPU."""

    precision: str | None = None  # f32 | bf16
    hint: str = "latency"  # latency | throughput
    threads: int | None = None  # INFERENCE_NUM_THREADS; None: OpenVINO's default (all physical cores)
    streams: int | None = None  # NUM_STREAMS; None: 1 for latency, OpenVINO's choice for throughput
    static_shapes: bool = True  # compile per input-shape set (faster at batch 1) instead of once, dynamic
    fold_zero_points: bool = True  # a QDQ ONNX's activation zero points folded into shifts (lowering.py)
    rewrite_graph: bool = True  # exact rewrites into fewer OpenVINO nodes (rewrites.py)

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.hint not in HINTS:
            raise UserError(f"OpenVINO hint must be one of {', '.join(HINTS)}, got {self.hint!r}")
        _count("threads", self.threads)
        _count("streams", self.streams)
        for flag in ("static_shapes", "fold_zero_points", "rewrite_graph"):
            if not isinstance(getattr(self, flag), bool):
                raise UserError(f"OpenVINO {flag} must be true or false, got {getattr(self, flag)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OvOptions:
        """Options as a sidecar records them; unknown keys are ignored (newer sidecars), bad values refused."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def compile_config(options: OvOptions, precision: str) -> dict:
    """The OpenVINO CPU properties for `options`, with `precision` already resolved (f32 or bf16)."""
    if precision not in PRECISIONS:
        raise UserError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    config: dict = {"PERFORMANCE_HINT": options.hint.upper(), "INFERENCE_PRECISION_HINT": precision}
    if options.threads is not None:
        config["INFERENCE_NUM_THREADS"] = options.threads
    streams = options.streams if options.streams is not None else (1 if options.hint == "latency" else None)
    if streams is not None:
        config["NUM_STREAMS"] = streams
    return config
