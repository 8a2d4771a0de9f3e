"""The mixed-precision plan: YAML parsed once into frozen, validated dataclasses.

A plan says, per layer, what precision and granularity to use::

    version: 1
    target: onnxruntime-cpu          # or tensorrt: picks the QDQ flavour and what is allowed
    calibration: {method: percentile, percentile: 99.99, images: calib_data/, num_images: 128}
    default: {precision: int8, weight_granularity: per-channel, activations: static}
    rules:                           # first match wins; glob or "re:" on module paths
      - match: "heads.*"
        precision: fp32

Every mistake is a `PlanError` naming the file, the line and the field, on one line. A rule
that matches no layer is an error too (with the closest layer names), but that
check needs the model's layers, so it happens in `QdqPlan.resolve`.

Reading the YAML itself safely (size limit, no aliases, no duplicate keys, the line of every
field, typed field access) lives in `plan_yaml.py`; which `re:` patterns are safe to match lives in `plan_regex.py`.
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

from vggt_deploy.quant.plan_regex import regex_problem
from vggt_deploy.quant.plan_targets import (  # TARGETS, PRECISIONS...: the plan's public vocabulary
    ACTIVATIONS,
    CANNOT_RUN_WHY,
    GRANULARITIES,
    METHODS,
    NOT_IMPLEMENTED,
    PRECISIONS,
    TARGET_ACTIVATIONS,
    TARGET_CAN_RUN,
    TARGET_PRECISIONS,
    TARGETS,
)
from vggt_deploy.quant.plan_yaml import (
    FieldReader,
    PlanError,
    load_yaml,
    read_plan_file,
    show_value,
    yaml_kind,
)

VERSION = 1
MAX_MATCH_CHARS = 500  # layer names are shorter; a longer pattern is a mistake
TOP_KEYS = ("version", "target", "calibration", "default", "rules")


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized.

    Args:
        precision: int8 | int4 (weight-only, per-block) | int16 | fp16 | fp32.
        weight_granularity: per-channel | per-tensor | per-block.
        block_size: block length for per-block weights (int4).
        activations: static (calibrated QDQ) | dynamic (ORT CPU, computed at run time) | off.
        attention_matmuls: also quantize Q·Kᵀ and attention·V inside matched attention modules.
        smoothing: SmoothQuant migration strength alpha in [0, 1] (plan: ``smoothing: {alpha: 0.5}``),
            or None (off). Per-channel factors move activation outliers into the weights; they are
            folded into the producer of the layer's input (LayerNorm affine or a previous Linear),
            so the exported graph gains no op (see `quant/smoothing.py`).
        fold_norm: move the affine of the LayerNorm this layer reads into this layer's weight and bias
            (and its sibling readers'), where the estimated int8 error allows (see `quant/norm_folding.py`):
            OpenVINO then fuses the quantizer into the LayerNorm, one node fewer.
    """

    precision: str = "int8"
    weight_granularity: str = "per-channel"
    block_size: int = 32
    activations: str = "static"
    attention_matmuls: bool = False
    smoothing: float | None = None
    fold_norm: bool = False

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
class TokenExclusion:
    """Token rows left out of the activation statistics (``calibration.exclude_tokens``).

    Special tokens (camera and register tokens, a CLS token) carry extreme values; letting
    them set a tensor's range would cost every patch token its resolution, so QuantVGGT and
    QVGGT calibrate without them. Along the token axis (the second-to-last) of every
    activation a Linear reads, the first `first` rows of each group of `period` rows are
    dropped: `period` 0 is the whole axis (only its first rows), ``frame`` the model's
    ``vggt.tokens_per_frame`` metadata (frame attention sees one frame, global attention all
    frames' tokens in a row). Tensors whose token axis does not divide into periods are kept whole.
    """

    first: int
    period: int | str = 0


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration data comes from and how ranges are computed.

    ``auto`` (the default) picks each tensor's clipping range by the error it causes in the
    consumer's output on the calibration data (`quant/auto_calib.py`); minmax, percentile,
    entropy and mse are onnxruntime's calibrators.
    """

    method: str = "auto"
    percentile: float = 99.99
    images: str = "calib_data"
    num_images: int = 128
    input: InputSpec = field(default_factory=InputSpec)
    exclude_tokens: TokenExclusion | None = None

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


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))


def _spec_fields(r: FieldReader, raw: dict, path: str, target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        p = f"{path}.{key}"
        if key == "precision":
            r.choice(value, p, PRECISIONS)
            if value not in TARGET_CAN_RUN[target]:
                why = CANNOT_RUN_WHY.get((value, target), f"use one of {', '.join(TARGET_PRECISIONS[target])}")
                raise r.fail(p, f"{value} cannot run on target {target} ({why})")
            if value not in TARGET_PRECISIONS[target]:
                instead = NOT_IMPLEMENTED.get(value, ", ".join(TARGET_PRECISIONS[target]))
                raise r.fail(p, f"{value} is not implemented in this release (use {instead})")
        elif key == "weight_granularity":
            r.choice(value, p, GRANULARITIES)
        elif key == "block_size":
            r.typed(value, p, int, 16, 4096)
            if value & (value - 1):
                raise r.fail(p, f"{value} is not a power of two (MatMulNBits takes 16, 32, 64, ... 4096)")
        elif key == "activations":
            if value is False:  # YAML 1.1 reads a bare `off` as false
                value = "off"
            r.choice(value, p, ACTIVATIONS)
            if value not in TARGET_ACTIVATIONS[target]:
                raise r.fail(p, f"{value} activations are not available on target {target} "
                                f"(use one of {', '.join(TARGET_ACTIVATIONS[target])})")
        elif key in ("attention_matmuls", "fold_norm"):
            r.typed(value, p, bool)
        elif key == "smoothing":
            value = _smoothing(r, value, p)
        out[key] = value
    return out


def _smoothing(r: FieldReader, value: Any, path: str) -> float | None:
    """`smoothing: {alpha: 0.5}` -> 0.5; `smoothing: off` (false) or null -> None."""
    if value is None or value is False or value == "off":
        return None
    raw = r.mapping(value, path, ("alpha",), required=True)
    if "alpha" not in raw:
        raise r.fail(path, "missing 'alpha' (the migration strength in [0, 1], e.g. smoothing: {alpha: 0.5})")
    return r.typed(raw["alpha"], f"{path}.alpha", float, 0.0, 1.0)


def _check_spec(r: FieldReader, spec: LayerSpec, path: str) -> None:
    if spec.precision == "int4" and (spec.weight_granularity != "per-block" or spec.activations != "off"):
        raise r.fail(path, "int4 is weight-only: it needs weight_granularity: per-block and activations: off")
    if spec.weight_granularity == "per-block" and spec.precision not in ("int4", "int8"):
        raise r.fail(path, "per-block weights need precision int4 or int8")
    if spec.weight_granularity == "per-block" and spec.activations != "off":
        raise r.fail(path, "per-block weights are weight-only: set activations: off")
    if spec.smoothing is not None and (spec.precision != "int8" or spec.activations == "off"):
        raise r.fail(path, "smoothing moves activation outliers into int8 weights: it needs precision int8 with "
                           "activations static or dynamic (or smoothing: off)")
    if spec.fold_norm and (spec.precision != "int8" or spec.activations == "off"):
        raise r.fail(path, "fold_norm lets the runtime fuse a LayerNorm with the quantizer after it: it needs "
                           "precision int8 with activations static or dynamic (or fold_norm: false)")


def _match(r: FieldReader, value: Any, path: str) -> str:
    """A rule's pattern: a glob, or `re:` and a regular expression that cannot backtrack for long."""
    pattern = r.typed(value, path, str)
    if not pattern.strip() or pattern == "re:":
        raise r.fail(path, "empty pattern (write a glob like 'blocks.*' or 're:' and a regular expression)")
    if len(pattern) > MAX_MATCH_CHARS:
        raise r.fail(path, f"pattern is {len(pattern)} characters long (at most {MAX_MATCH_CHARS})")
    if "\x00" in pattern:
        raise r.fail(path, "pattern contains a NUL character")
    if pattern.startswith("re:"):
        problem = regex_problem(pattern[3:])
        if problem is not None:
            raise r.fail(path, problem)
    return pattern


def parse_plan(text: str, source: str = "<plan>", target: str | None = None) -> QdqPlan:
    """Parse and validate a plan document; `target` overrides the plan's own target."""
    data, lines = load_yaml(text, source)
    r = FieldReader(source, lines)
    if data is None:
        raise PlanError(f"{source}:1: empty plan (a plan starts with 'version: {VERSION}')")
    if not isinstance(data, dict):
        raise PlanError(f"{source}:{lines.get('', 1)}: a plan is a mapping of {', '.join(TOP_KEYS)}; "
                        f"got {yaml_kind(data)}")
    top = r.mapping(data, "", TOP_KEYS)
    if "version" not in top:
        raise r.fail("version", f"missing; this release reads version: {VERSION}")
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise r.fail("version", f"expected an integer, got {show_value(version)}; this release reads version: {VERSION}")
    if version != VERSION:
        raise r.fail("version", f"unsupported version {version!r}; this release reads version: {VERSION}")
    if "target" in top:  # checked even when overridden: a typo should not hide behind --target
        r.choice(top["target"], "target", TARGETS)
    target = r.choice(target or top.get("target", "onnxruntime-cpu"), "target", TARGETS)
    calibration = _calibration(r, top.get("calibration"))
    default_raw = r.mapping(top.get("default"), "default", _SPEC_FIELDS)
    default = LayerSpec(**_spec_fields(r, default_raw, "default", target))
    _check_spec(r, default, "default")
    rules_raw = top.get("rules")
    if rules_raw is None:  # absent, or `rules:` with every rule commented out
        rules_raw = []
    if not isinstance(rules_raw, list):
        raise r.fail("rules", f"expected a list of rules ('- match: ...' lines), got {yaml_kind(rules_raw)}")
    rules = []
    for i, raw in enumerate(rules_raw):
        path = f"rules[{i}]"
        raw = r.mapping(raw, path, ("match",) + _SPEC_FIELDS, required=True)
        if "match" not in raw:
            raise r.fail(path, "missing 'match' (a glob or 're:' pattern on layer names)")
        pattern = _match(r, raw["match"], f"{path}.match")
        overrides = _spec_fields(r, {k: v for k, v in raw.items() if k != "match"}, path, target)
        _check_spec(r, dataclasses.replace(default, **overrides), path)
        rules.append(Rule(match=pattern, overrides=overrides, line=lines.get(path, 1)))
    return QdqPlan(VERSION, target, calibration, default, tuple(rules), source=source, text=text)


def _calibration(r: FieldReader, raw: Any) -> CalibrationSpec:
    path = "calibration"
    raw = r.mapping(raw, path, ("method", "percentile", "images", "num_images", "input", "exclude_tokens"))
    values: dict[str, Any] = {}
    if "method" in raw:
        values["method"] = r.choice(raw["method"], f"{path}.method", METHODS)
    if "percentile" in raw:
        values["percentile"] = r.typed(raw["percentile"], f"{path}.percentile", float, 50.0, 100.0)
    if "images" in raw:
        values["images"] = r.text(raw["images"], f"{path}.images")
    if "num_images" in raw:
        values["num_images"] = r.typed(raw["num_images"], f"{path}.num_images", int, 1, 100_000)
    if "input" in raw:
        ip = f"{path}.input"
        inp = r.mapping(raw["input"], ip, tuple(f.name for f in dataclasses.fields(InputSpec)))
        spec: dict[str, Any] = {}
        for key, value in inp.items():
            p = f"{ip}.{key}"
            if key in ("name", "npy_dir"):
                spec[key] = r.text(value, p)
            elif key == "size":
                spec[key] = r.typed(value, p, int, 1, 8192)
            elif key in ("mean", "std"):
                if not (isinstance(value, list) and len(value) == 3):
                    raise r.fail(p, f"expected a list of 3 numbers, got {yaml_kind(value)}")
                spec[key] = tuple(r.typed(v, f"{p}[{j}]", float, -1e6, 1e6) for j, v in enumerate(value))
                if key == "std" and min(spec[key]) <= 0:
                    raise r.fail(p, f"every std must be > 0, got {show_value(list(spec[key]))}")
            elif key == "channel_order":
                spec[key] = r.choice(value, p, ("rgb", "bgr"))
        values["input"] = InputSpec(**spec)
    if "exclude_tokens" in raw:
        values["exclude_tokens"] = _token_exclusion(r, raw["exclude_tokens"], f"{path}.exclude_tokens")
        if values.get("method", "auto") != "auto":
            raise r.fail(f"{path}.exclude_tokens", "needs method auto (ONNX Runtime's calibrators see whole tensors, "
                                                    "so they cannot leave token rows out)")
    return CalibrationSpec(**values)


def _token_exclusion(r: FieldReader, raw: Any, path: str) -> TokenExclusion:
    raw = r.mapping(raw, path, ("first", "period"))
    if "first" not in raw:
        raise r.fail(path, "needs first: how many special-token rows lead each period (e.g. first: 5)")
    first = r.typed(raw["first"], f"{path}.first", int, 1, 1_000_000)
    period: int | str = 0
    if "period" in raw:
        if raw["period"] == "frame":
            period = "frame"
        else:
            period = r.typed(raw["period"], f"{path}.period", int, 0, 100_000_000)
            if period and period <= first:
                raise r.fail(f"{path}.period", f"must exceed first ({first}), or be 0 (the whole axis) or frame")
    return TokenExclusion(first, period)


def load_plan(path: str | Path, target: str | None = None) -> QdqPlan:
    """Read and validate a plan file (for `target` instead of its own, when given)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise PlanError(f"{path}: is a folder, not a plan file")
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "plan file not found"
            raise PlanError(f"{path}: {what} (shipped plans: {_shipped_names()})")
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read plan ({exc})") from None
    return parse_plan(read_plan_file(path), source=str(path), target=target)


def _shipped_names() -> str:
    from vggt_deploy.paths import shipped_plan_names

    try:
        return ", ".join(shipped_plan_names())
    except OSError:  # pragma: no cover - broken installation
        return "none found"
