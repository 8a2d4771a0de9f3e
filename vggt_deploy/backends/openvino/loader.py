"""OpenVINO, imported lazily, and what the build and the runner need to know about this CPU.

openvino is imported inside these functions, not at package import, so `import vggt_deploy`
stays light and a missing install gives one line saying what to install. The CPU's model name
and its vector/matrix flags (from /proc/cpuinfo) identify where a build-ov folder was compiled:
its cached blobs and its bf16 choice belong to that CPU.
"""

from __future__ import annotations

import functools
import io
import platform
import re
from pathlib import Path
from typing import Any

from vggt_deploy.errors import UserError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic (Cooper Lake / Zen 4 and later, Sapphire Rapids AMX)
_FLAG_WORDS = ("avx", "amx", "vnni", "bf16", "fp16", "f16c", "fma", "i8mm", "asimddp", "sve")
CPUINFO = Path("/proc/cpuinfo")


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError("OpenVINO is not installed: pip install openvino (it comes with `pip install vggt-deploy`; "
                        "the docker/Dockerfile.cpu image has it)") from None
    return openvino


def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _field(name: str) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo, or None."""
    for line in _cpuinfo().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_flags() -> list[str]:
    """The CPU's vector, matrix and low-precision flags (avx*, amx*, *vnni*, *bf16*, ...), sorted; [] off Linux."""
    line = _field("flags") or _field("Features") or ""  # x86 / aarch64
    return sorted({f for f in line.split() if any(w in f for w in _FLAG_WORDS)})


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    return _field("model name") or platform.processor() or platform.machine() or "unknown"


def ov_version() -> str:
    return import_openvino().__version__


@functools.cache
def ov_capabilities() -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU plugin (e.g. FP32, BF16, INT8); asked once per process."""
    ov = import_openvino()
    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def default_precision() -> str:
    """bf16 where the CPU computes it natively (avx512_bf16 or amx_bf16) and OpenVINO offers it, else f32."""
    if not any(flag in cpu_flags() for flag in BF16_FLAGS):
        return "f32"
    return "bf16" if "BF16" in ov_capabilities() else "f32"


def check_precision(precision: str) -> None:
    """Refuse bf16 on a CPU where OpenVINO has no bf16 path (it is never silently downgraded)."""
    if precision == "bf16" and "BF16" not in ov_capabilities():
        raise UserError(f"this CPU ({cpu_name()}) has no bf16 support in OpenVINO "
                        f"(capabilities: {', '.join(ov_capabilities())}); use --precision f32")


def ov_errors() -> tuple[type[BaseException], ...]:
    """What OpenVINO raises for a model it cannot read or compile (RuntimeError, its own OVError types)."""
    import_openvino()
    try:
        from openvino.exceptions import OVError, OVTypeError, UserInputError

        return (RuntimeError, OVError, OVTypeError, UserInputError)
    except ImportError:
        return (RuntimeError,)


_NOISE = (
    re.compile(r"^Exception from \S+:\d+:?$"),  # C++ source location
    re.compile(r"^Check '.*' failed at \S+:?$"),
    re.compile(r"^FrontEnd API failed with \w+:?$"),
)


def ov_reason(exc: BaseException) -> str:
    """The first informative line of OpenVINO's message, without its C++ source locations."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not any(p.match(line) for p in _NOISE)]
    text = (useful or lines or [exc.__class__.__name__])[0]
    return text[:240]


def read_model(core: Any, path: Path, data: bytes | None = None) -> Any:
    """`core.read_model`, with every failure as one UserError naming the file.

    `data`: the file's model already in memory (an ONNX rewritten by lowering.py), read instead of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        return core.read_model(io.BytesIO(data)) if data is not None else core.read_model(str(path))
    except ov_errors() as exc:
        raise UserError(f"{path}: OpenVINO cannot read it ({ov_reason(exc)})") from None


def model_metadata(model: Any) -> dict[str, str]:
    """The `vggt.*` metadata the ONNX export wrote (OpenVINO keeps it in the model's rt_info, IR included)."""
    try:
        framework = model.get_rt_info()["framework"]
        items = framework.items()
    except (KeyError, RuntimeError, AttributeError, TypeError):
        return {}
    out = {}
    for key, value in items:
        if str(key).startswith("vggt."):
            out[str(key)] = str(getattr(value, "value", value))
    return out
