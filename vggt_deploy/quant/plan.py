"""The mixed-precision plan: YAML parsed once into frozen, validated dataclasses.

A plan says, per layer, what precision and granularity to use::

    version: 1
    target: onnxruntime-cpu          # or tensorrt: picks the QDQ flavour and what is allowed
    calibration: {method: percentile, percentile: 99.99, images: calib_data/, num_images: 128}
    default: {precision: int8, weight_granularity: per-channel, activations: static}
    rules:                           # first match wins; glob or "re:" on module paths
      - match: "heads.*"
        precision: fp32

Every mistake is a `PlanError` naming the file, the line and the field. A rule
that matches no layer is an error too (with the closest layer names), but that
check needs the model's layers, so it happens in `QdqPlan.resolve`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vggt_deploy.errors import UserError

VERSION = 1
TARGETS = ("tensorrt", "onnxruntime-cpu")
PRECISIONS = ("int8", "int4", "int16", "fp16", "fp32")
GRANULARITIES = ("per-channel", "per-tensor", "per-block")
ACTIVATIONS = ("static", "dynamic", "off")
METHODS = ("minmax", "percentile", "entropy", "mse")

# What each target can run. TensorRT has no int16 QDQ and no dynamic activation quantization,
# and its int4 weight-only path needs blocked DequantizeLinear (opset 21), which TensorRT 10.3's
# parser (JetPack 6) does not read. ONNX Runtime's CPU provider has no fast fp16 kernels, so
# fp16 there would be a silent slowdown.
TARGET_PRECISIONS = {"tensorrt": ("int8", "fp16", "fp32"), "onnxruntime-cpu": ("int8", "int4", "int16", "fp32")}
TARGET_ACTIVATIONS = {"tensorrt": ("static",), "onnxruntime-cpu": ACTIVATIONS}


class PlanError(UserError):
    """A plan that cannot be used; the message names file, line and field."""


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized.

    Args:
        precision: int8 | int4 (weight-only, per-block) | int16 | fp16 | fp32.
        weight_granularity: per-channel | per-tensor | per-block.
        block_size: block length for per-block weights (int4).
        activations: static (calibrated QDQ) | dynamic (ORT CPU, computed at run time) | off.
        attention_matmuls: also quantize Q·Kᵀ and attention·V inside matched attention modules.
    """

    precision: str = "int8"
    weight_granularity: str = "per-channel"
    block_size: int = 32
    activations: str = "static"
    attention_matmuls: bool = False

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "int4", "int16")


@dataclass(frozen=True)
class InputSpec:
    """Preprocessing of a foreign model's image input (for --onnx models not made here)."""

    name: str | None = None
    size: int | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    channel_order: str = "rgb"
    npy_dir: str | None = None  # ready (C, H, W) float32 tensors instead of images


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration data comes from and how ranges are computed."""

    method: str = "percentile"
    percentile: float = 99.99
    images: str = "calib_data"
    num_images: int = 128
    input: InputSpec = field(default_factory=InputSpec)

    def cache_key(self) -> str:
        """Stable hash of this section: rules may change without recalibrating."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Rule:
    """One ordered rule: a pattern and the LayerSpec fields it overrides."""

    match: str
    overrides: dict[str, Any]
    line: int

    def matches(self, name: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.match)


@dataclass(frozen=True)
class Resolved:
    """A layer's final spec and which rule set it (None: the default)."""

    spec: LayerSpec
    rule: int | None


@dataclass(frozen=True)
class QdqPlan:
    version: int
    target: str
    calibration: CalibrationSpec
    default: LayerSpec
    rules: tuple[Rule, ...]
    source: str = "<plan>"
    text: str = ""

    def plan_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def resolve(self, names: list[str]) -> dict[str, Resolved]:
        """The spec of every layer name; a rule that matches nothing is an error."""
        out: dict[str, Resolved] = {}
        used = [False] * len(self.rules)
        for name in names:
            for i, rule in enumerate(self.rules):
                if rule.matches(name):
                    used[i] = True
                    out[name] = Resolved(dataclasses.replace(self.default, **rule.overrides), i)
                    break
            else:
                out[name] = Resolved(self.default, None)
        for i, rule in enumerate(self.rules):
            if not used[i]:
                close = difflib.get_close_matches(rule.match.removeprefix("re:"), names, n=5, cutoff=0.4)
                hint = f"; did you mean: {', '.join(close)}" if close else f"; layers look like: {', '.join(names[:5])}"
                raise PlanError(f"{self.source}:{rule.line}: rules[{i}].match {rule.match!r} matches no layer{hint}")
        return out


# ---- parsing -----------------------------------------------------------------------------------


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping key and list item, by dotted path."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, f"{path}[{i}]", out)


class _Reader:
    """Typed field access with errors that name the file, line and field."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source, self.lines = source, lines

    def fail(self, path: str, message: str) -> PlanError:
        line = self.lines.get(path)
        if line is None:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            line = self.lines.get(parent, 1)
        return PlanError(f"{self.source}:{line}: {path}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
                raise self.fail(f"{path}.{key}" if path else str(key), f"unknown key{hint}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def typed(self, value: Any, path: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(path, f"expected {kind.__name__}, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(path, f"{value!r} is outside [{lo}, {hi}]")
        return value


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))


def _spec_fields(r: _Reader, raw: dict, path: str, target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        p = f"{path}.{key}"
        if key == "precision":
            r.choice(value, p, PRECISIONS)
            if value not in TARGET_PRECISIONS[target]:
                raise r.fail(p, f"{value} cannot run on target {target} (use one of {', '.join(TARGET_PRECISIONS[target])})")
        elif key == "weight_granularity":
            r.choice(value, p, GRANULARITIES)
        elif key == "block_size":
            r.typed(value, p, int, 8, 4096)
        elif key == "activations":
            if value is False:  # YAML 1.1 reads a bare `off` as false
                value = "off"
            r.choice(value, p, ACTIVATIONS)
            if value not in TARGET_ACTIVATIONS[target]:
                raise r.fail(p, f"{value} activations are not available on target {target} "
                                f"(use one of {', '.join(TARGET_ACTIVATIONS[target])})")
        elif key == "attention_matmuls":
            r.typed(value, p, bool)
        out[key] = value
    return out


def _check_spec(r: _Reader, spec: LayerSpec, path: str) -> None:
    if spec.precision == "int4" and (spec.weight_granularity != "per-block" or spec.activations != "off"):
        raise r.fail(path, "int4 is weight-only: it needs weight_granularity: per-block and activations: off")
    if spec.weight_granularity == "per-block" and spec.precision not in ("int4", "int8"):
        raise r.fail(path, "per-block weights need precision int4 or int8")
    if spec.weight_granularity == "per-block" and spec.activations != "off":
        raise r.fail(path, "per-block weights are weight-only: set activations: off")


def parse_plan(text: str, source: str = "<plan>", target: str | None = None) -> QdqPlan:
    """Parse and validate a plan document; `target` overrides the plan's own target."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise PlanError(f"{source}{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, "", lines)
    r = _Reader(source, lines)
    top = r.mapping(data, "", ("version", "target", "calibration", "default", "rules"))
    if "version" not in top:
        raise r.fail("version", f"missing; this release reads version: {VERSION}")
    if top["version"] != VERSION:
        raise r.fail("version", f"unsupported version {top['version']!r}; this release reads version: {VERSION}")
    target = r.choice(target or top.get("target", "onnxruntime-cpu"), "target", TARGETS)
    calibration = _calibration(r, top.get("calibration"))
    default_raw = r.mapping(top.get("default"), "default", _SPEC_FIELDS)
    default = LayerSpec(**_spec_fields(r, default_raw, "default", target))
    _check_spec(r, default, "default")
    rules_raw = top.get("rules") or []
    if not isinstance(rules_raw, list):
        raise r.fail("rules", "expected a list of rules")
    rules = []
    for i, raw in enumerate(rules_raw):
        path = f"rules[{i}]"
        raw = r.mapping(raw, path, ("match",) + _SPEC_FIELDS)
        if "match" not in raw:
            raise r.fail(path, "missing 'match' (a glob or 're:' pattern on layer names)")
        pattern = r.typed(raw["match"], f"{path}.match", str)
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise r.fail(f"{path}.match", f"bad regular expression ({exc})") from None
        overrides = _spec_fields(r, {k: v for k, v in raw.items() if k != "match"}, path, target)
        _check_spec(r, dataclasses.replace(default, **overrides), path)
        rules.append(Rule(match=pattern, overrides=overrides, line=lines.get(path, 1)))
    return QdqPlan(VERSION, target, calibration, default, tuple(rules), source=source, text=text)


def _calibration(r: _Reader, raw: Any) -> CalibrationSpec:
    path = "calibration"
    raw = r.mapping(raw, path, ("method", "percentile", "images", "num_images", "input"))
    values: dict[str, Any] = {}
    if "method" in raw:
        values["method"] = r.choice(raw["method"], f"{path}.method", METHODS)
    if "percentile" in raw:
        values["percentile"] = r.typed(raw["percentile"], f"{path}.percentile", float, 50.0, 100.0)
    if "images" in raw:
        values["images"] = r.typed(raw["images"], f"{path}.images", str)
    if "num_images" in raw:
        values["num_images"] = r.typed(raw["num_images"], f"{path}.num_images", int, 1, 100_000)
    if "input" in raw:
        ip = f"{path}.input"
        inp = r.mapping(raw["input"], ip, tuple(f.name for f in dataclasses.fields(InputSpec)))
        spec: dict[str, Any] = {}
        for key, value in inp.items():
            p = f"{ip}.{key}"
            if key in ("name", "npy_dir"):
                spec[key] = r.typed(value, p, str)
            elif key == "size":
                spec[key] = r.typed(value, p, int, 1, 8192)
            elif key in ("mean", "std"):
                if not (isinstance(value, list) and len(value) == 3):
                    raise r.fail(p, "expected a list of 3 numbers")
                spec[key] = tuple(r.typed(v, p, float) for v in value)
            elif key == "channel_order":
                spec[key] = r.choice(value, p, ("rgb", "bgr"))
        values["input"] = InputSpec(**spec)
    return CalibrationSpec(**values)


def load_plan(path: str | Path, target: str | None = None) -> QdqPlan:
    """Read and validate a plan file (for `target` instead of its own, when given)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan file not found (shipped plans live in models/plans/)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: cannot read plan ({exc})") from None
    return parse_plan(text, source=str(path), target=target)
