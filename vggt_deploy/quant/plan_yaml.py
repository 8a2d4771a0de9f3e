"""Reading a plan's YAML under fixed budgets, with a line number for every field.

`yaml.safe_load` never runs code, but it is not safe against every mistaken or hostile
document, and a plan may come from anyone. What this module adds, and why:

- **Size.** A plan is a few hundred bytes; a file over `MAX_PLAN_BYTES` is refused before it
  is read (and text over the limit before it is parsed), so a wrong path (a model, a log)
  cannot eat memory. Binary and non-UTF-8 files get one clear error instead of a decode trace.
- **Aliases.** `a: &a [1, 1]` / `b: &b [*a, *a]` ... nine levels deep expands to billions of
  nodes when constructed (an "alias bomb"). Plans never need aliases, so the composer refuses
  the first `*name` before anything is expanded; merge keys (`<<:`) are refused with them.
- **Nesting and node count.** PyYAML composes recursively, so `[[[[...` a few thousand deep
  ends in RecursionError; more than `MAX_DEPTH` levels or `MAX_NODES` nodes is refused.
- **Duplicate keys.** PyYAML silently keeps the last of two equal keys; here it is an error
  naming the line of the duplicate and of the first one.
- **Lines.** `load_yaml` returns, with the data, the 1-based line of every field by dotted
  path (`calibration.percentile`, `rules[2].match`), which `plan.py` puts in its messages.
- **Typed fields.** `FieldReader` reads a mapping, a choice, a bounded number or a one-line text
  and fails with that line and field; `plan.py` checks every plan field through it.

Every failure is a `PlanError` whose message is one line: `FILE:LINE: what is wrong`.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml

from vggt_deploy.errors import UserError

MAX_PLAN_BYTES = 256 * 1024
MAX_NODES = 10_000
MAX_DEPTH = 32
MAX_TEXT_CHARS = 4096  # paths and input names in a plan
_LIMIT = f"{MAX_PLAN_BYTES // 1024} KiB"


class PlanError(UserError):
    """A plan that cannot be used; the message names file, line and field (always one line)."""

    def __init__(self, message: str) -> None:
        # Keys and values come from the user's file: escape anything that would break the line.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


def key_text(key: Any) -> str:
    """A mapping key as it appears in field paths (`rules[0].precision`), shortened if long."""
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def read_plan_file(path: Path) -> str:
    """The text of a plan file: size-checked before reading, refused if binary or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise PlanError(f"{path}: plan file is {size} bytes, over the {_LIMIT} limit for plans "
                            "(is this really a plan?)")
        with path.open("rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)  # the file may have grown since stat()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan ({exc.strerror or exc})") from None
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: plan file is over the {_LIMIT} limit for plans (is this really a plan?)")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PlanError(f"{path}: plan is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise PlanError(f"{path}: binary file, not a YAML plan (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PlanError(f"{path}:{line}: plan is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}); save it as UTF-8") from None


def check_text(text: str, source: str) -> None:
    """Refuse plan text that is too large or binary, before the YAML parser sees it."""
    if not isinstance(text, str):
        raise PlanError(f"{source}: plan text must be a string, got {type(text).__name__}")
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"{source}: plan is {len(text)} characters, over the {_LIMIT} limit for plans")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise PlanError(f"{source}:{line}: binary data, not a YAML plan (it contains NUL characters)")


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and bounds nesting and node count while composing."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source, self.nodes, self.depth = source, 0, 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise PlanError(f"{self.source}:{line}: YAML aliases (*{key_text(event.anchor)}) are not allowed in "
                            "plans; write the value out")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise PlanError(f"{self.source}:{line}: plan has more than {MAX_NODES} YAML values (is this really a plan?)")
        if self.depth >= MAX_DEPTH:
            raise PlanError(f"{self.source}:{line}: plan is nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError, ArithmeticError):
            # e.g. `!!int abc`, `!!timestamp x`, or an integer of 5000 digits
            value = key_text(node.value) if isinstance(node.value, str) else node.id
            raise PlanError(f"{self.source}:{node.start_mark.line + 1}: malformed YAML ({value!r} cannot be read "
                            f"as {node.tag.rsplit(':', 1)[-1]})") from None


def _walk(loader: _Loader, node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    """Record the line of every key and list item; refuse duplicate, complex and merge keys."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            where = f"{loader.source}:{line}: {path or 'top level'}"
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise PlanError(f"{where}: YAML merge keys (<<) are not allowed in plans; write the fields out")
            if not isinstance(key_node, yaml.ScalarNode):
                raise PlanError(f"{where}: a key must be a plain name, not a list or mapping")
            key = loader.construct_object(key_node)
            sub = f"{path}.{key_text(key)}" if path else key_text(key)
            if key in seen:  # scalar keys (str, int, bool, null, ...) are all hashable
                raise PlanError(f"{loader.source}:{line}: {sub}: duplicate key (first given on line {seen[key]}; "
                                "YAML would silently keep only the last)")
            seen[key] = line
            lines[sub] = line
            _walk(loader, value_node, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(loader, item, f"{path}[{i}]", lines)


def _yaml_message(exc: yaml.YAMLError, text: str, source: str) -> str:
    """One line for a PyYAML error: where it is and what is wrong."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return f"{source}:{line}: malformed YAML (character U+{char:04X} is not allowed in a plan)"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context:  # PyYAML's two halves: "while scanning ..." follows the problem, "expected ..." leads it
        detail = f"{problem} {context}" if context.startswith("while") else f"{context}, {problem}"
    else:
        detail = problem
    if "\t" in detail or "\\t" in detail:
        detail += "; indent with spaces, not tabs"
    return f"{source}{where}: malformed YAML ({detail})"


def load_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document under the budgets above: (data, {dotted field path: line})."""
    check_text(text, source)
    loader = None
    try:
        loader = _Loader(text, source)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        _walk(loader, node, "", lines)
        return loader.construct_document(node), lines
    except yaml.YAMLError as exc:
        raise PlanError(_yaml_message(exc, text, source)) from None
    except RecursionError:  # not expected with MAX_DEPTH, but never a traceback
        raise PlanError(f"{source}: plan is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


# ---- typed field access for plan.py ---------------------------------------------------------


def show_value(value: Any) -> str:
    """A value for a one-line message: YAML words for booleans and null, long values shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def yaml_kind(value: Any) -> str:
    """What a YAML value is, in YAML's words."""
    if isinstance(value, bool):
        return f"a boolean ({show_value(value)})"
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number"}
    return f"{names.get(type(value), type(value).__name__)} ({show_value(value)})"


class FieldReader:
    """Typed field access with errors that name the file, line and field."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source, self.lines = source, lines

    def fail(self, path: str, message: str) -> PlanError:
        line = self.lines.get(path)
        if line is None:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            line = self.lines.get(parent, 1)
        return PlanError(f"{self.source}:{line}: {path}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping (key: value), got {yaml_kind(value)}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
                raise self.fail(f"{path}.{key_text(key)}" if path else key_text(key), f"unknown key{hint}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if isinstance(value, bool) or value not in choices:
            close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise self.fail(path, f"{show_value(value)} is not one of {', '.join(choices)}{hint}")
        return value

    def typed(self, value: Any, path: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
        """`value` as `kind`; booleans are never numbers, numbers must be finite and in [lo, hi]."""
        if kind is bool:
            ok = isinstance(value, bool)
        else:
            ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind)
        if not ok:
            raise self.fail(path, f"expected {kind.__name__}, got {show_value(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(path, f"expected a finite number, got {show_value(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(path, f"{show_value(value)} is outside [{lo}, {hi}]")
        return float(value) if kind is float else value

    def text(self, value: Any, path: str) -> str:
        """A non-empty one-line string (a path or a name)."""
        value = self.typed(value, path, str)
        if not value.strip():
            raise self.fail(path, "must not be empty")
        if "\x00" in value or "\n" in value:
            raise self.fail(path, f"{show_value(value)} contains a NUL or newline character")
        if len(value) > MAX_TEXT_CHARS:
            raise self.fail(path, f"is {len(value)} characters long (at most {MAX_TEXT_CHARS})")
        return value
