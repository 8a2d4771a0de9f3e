"""Units of a model for sensitivity analysis, and plans that quantize a chosen set of them.

A *unit* is a group of quantizable layers that is kept in float or quantized
as a whole:

- ``block`` units: the patch embedding, each backbone block (``blocks.3``),
  each grounding cross-attention layer (``grounding.1``), the heads, the
  grounding-token initialisation, and ``attention_matmuls`` (every Q·Kᵀ and
  attention·V matmul in the model, which plans leave float unless
  ``attention_matmuls: true``);
  VGGT-1B: ``frame.N`` and ``global.N`` per aggregator block, ``patch_embed`` (the DINO
  trunk) and ``heads`` (camera, depth and point heads);
- ``layer`` units: every MatMul/Gemm/Conv on its own (``blocks.3.attn.q``).

`unit_plan` turns "these units quantized, the rest float" into an ordinary
`QdqPlan` (YAML text included), so every variant the analysis measures is a
plan a user could have written, and the automatic plan is written the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass

import yaml

from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import Layer
from vggt_deploy.quant.plan import InputSpec, QdqPlan, Rule, parse_plan
from vggt_deploy.quant.plan_targets import KEPT_FLOAT

UNIT_KINDS = ("block", "layer")
ATTENTION_UNIT = "attention_matmuls"
ATTENTION_PATTERN = r"re:.*\.(qk|av)$"
_STAGED = ("blocks", "grounding")  # module lists whose index is part of the unit name


@dataclass(frozen=True)
class Unit:
    """A named group of layers and the plan pattern that selects exactly them."""

    name: str
    layers: tuple[str, ...]
    pattern: str
    attention: bool = False  # made of activation-only attention matmuls


# VGGT-1B (model/vggt1b) as QuantVGGT analyses it: one unit per frame and per global block, the DINO
# patch embedding, and the three heads together. (name, pattern) from a layer-name match.
_VGGT1B_UNITS = (
    (re.compile(r"aggregator\.(frame|global)_blocks\.(\d+)\."),
     lambda m: (f"{m[1]}.{m[2]}", f"aggregator.{m[1]}_blocks.{m[2]}.*")),
    (re.compile(r"aggregator\.patch_embed\."), lambda m: ("patch_embed", "aggregator.patch_embed.*")),
    (re.compile(r"(camera|depth|point)_head\."), lambda m: ("heads", r"re:(camera|depth|point)_head\..*")),
)


def _block_of(layer: Layer) -> tuple[str, str]:
    """The block unit's name and pattern for a layer."""
    name = layer.name.split("#")[0]
    for regex, unit in _VGGT1B_UNITS:
        if (m := regex.match(name)) is not None:
            return unit(m)
    parts = name.split(".")
    block = ".".join(parts[:2]) if parts[0] in _STAGED and len(parts) > 1 else parts[0]
    return block, f"{block}.*"


def model_units(layers: list[Layer], kind: str) -> list[Unit]:
    """All units of `kind` in graph order of their first layer."""
    if kind not in UNIT_KINDS:
        raise UserError(f"unknown unit kind {kind!r}; use one of {', '.join(UNIT_KINDS)}")
    if kind == "layer":
        return [Unit(l.name, (l.name,), _exact(l.name), attention=l.is_attention_matmul) for l in layers]
    groups: dict[str, list[str]] = {}
    patterns = {ATTENTION_UNIT: ATTENTION_PATTERN}
    for layer in layers:
        if layer.is_attention_matmul:
            key = ATTENTION_UNIT
        else:
            key, patterns[key] = _block_of(layer)
        groups.setdefault(key, []).append(layer.name)
    return [Unit(name, tuple(names), patterns[name], attention=name == ATTENTION_UNIT)
            for name, names in groups.items()]


def _exact(name: str) -> str:
    """A pattern that matches only `name` (a glob when it has no glob characters)."""
    return name if not any(c in name for c in "*?[]") else "re:" + re.escape(name)


def select_units(units: list[Unit], names: list[str]) -> list[Unit]:
    """The units called `names`, in model order; an unknown name is an error with suggestions."""
    by_name = {u.name: u for u in units}
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.4)
            hint = f"did you mean: {', '.join(close)}?" if close else f"units are: {', '.join(list(by_name)[:12])}"
            raise UserError(f"unknown unit {name!r}; {hint} (list them with `vggt-deploy sensitivity --list-units`)")
    wanted = set(names)
    return [u for u in units if u.name in wanted]


def quantizable_units(units: list[Unit], layers: list[Layer], base: QdqPlan) -> list[Unit]:
    """Units the base plan quantizes at least partly; attention units always qualify (they set their own spec)."""
    resolved = base.resolve([l.name for l in layers])
    weighted = {l.name for l in layers if l.weight is not None}
    return [u for u in units if u.attention or any(n in weighted and resolved[n].spec.quantized for n in u.layers)]


def unit_plan(base: QdqPlan, units: list[Unit], quantized: set[str], layer_names: list[str],
              comments: dict[str, str] | None = None, header: str = "") -> QdqPlan:
    """A plan equal to `base` on the `quantized` units, float on every other unit.

    Rules, first match wins: attention units that are quantized (int8, static,
    attention_matmuls on), then one float rule per float unit, then the base
    plan's rules that still decide some layer. `comments[unit]` is written
    above that unit's rule. Float is the target's `KEPT_FLOAT` (bf16 on openvino-cpu, else fp32).
    """
    comments = comments or {}
    # what the float rules say: the target's float, without smoothing or LayerNorm folding (int8 layers only)
    kept_float = {"precision": KEPT_FLOAT[base.target],
                  **({"smoothing": None} if base.default.smoothing is not None else {}),
                  **({"fold_norm": False} if base.default.fold_norm else {})}
    rules: list[tuple[str, dict, str]] = []
    for unit in units:
        if unit.attention and unit.name in quantized:
            rules.append((unit.pattern, {"precision": "int8", "activations": "static", "attention_matmuls": True},
                          comments.get(unit.name, "")))
    for unit in units:
        if unit.name not in quantized:
            rules.append((unit.pattern, dict(kept_float), comments.get(unit.name, "")))
    generated = [Rule(p, o, 0) for p, o, _ in rules]
    deciding = set()
    for name in layer_names:
        if any(r.matches(name) for r in generated):
            continue
        for i, rule in enumerate(base.rules):
            if rule.matches(name):
                deciding.add(i)
                break
    for i, rule in enumerate(base.rules):
        if i in deciding:
            rules.append((rule.match, dict(rule.overrides), f"from {base.source}"))
    text = _render(base, rules, header)
    return parse_plan(text, source=f"<plan: {len(quantized)} of {len(units)} units quantized>")


_YAML_WORDS = ("true", "false", "null", "off", "on", "yes", "no")  # would not read back as strings


def _flow(obj: object) -> str:
    if isinstance(obj, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", obj) and obj not in _YAML_WORDS:
        return obj  # plain identifiers stay unquoted, as people write plans
    if not isinstance(obj, dict):
        return json.dumps(obj)  # a JSON scalar is a YAML scalar
    return yaml.safe_dump(obj, default_flow_style=True, sort_keys=False, width=1000).strip()


def _render(base: QdqPlan, rules: list[tuple[str, dict, str]], header: str) -> str:
    calibration = dataclasses.asdict(base.calibration)
    if base.calibration.input == InputSpec():
        del calibration["input"]
    else:  # unset fields (None) are left out: a plan reads no null there
        calibration["input"] = {k: list(v) if isinstance(v, tuple) else v for k, v in calibration["input"].items()
                                if v is not None}
    if calibration["exclude_tokens"] is None:
        del calibration["exclude_tokens"]
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["version: 1", f"target: {base.target}", f"calibration: {_flow(calibration)}",
              f"default: {_flow(_plan_fields(dataclasses.asdict(base.default)))}"]
    lines.append("rules:" if rules else "rules: []")
    for pattern, overrides, comment in rules:
        for line in comment.splitlines():
            lines.append(f"  # {line}")
        lines.append(f"  - match: {_flow(pattern)}")
        lines += [f"    {key}: {_flow(value)}" for key, value in _plan_fields(overrides).items()]
    return "\n".join(lines) + "\n"


def _plan_fields(spec: dict) -> dict:
    """LayerSpec fields as a plan writes them: smoothing is `{alpha: a}` (or null)."""
    if spec.get("smoothing") is not None:
        spec = {**spec, "smoothing": {"alpha": spec["smoothing"]}}
    return spec
