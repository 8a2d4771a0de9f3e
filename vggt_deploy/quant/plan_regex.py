"""Which `re:` patterns a plan may use: ones that cannot backtrack for minutes.

A rule's `re:` pattern is matched (`re.fullmatch`) against every layer name of the model.
Python's `re` is a backtracking engine, so some patterns take exponential time on a name
they do not match: `(a+)+$`, `(a|aa)*b` or `(.|.)*!` against a 40-character name runs for
minutes. Even without nesting, every `.*` multiplies the work: `.*.*.*.*!` takes seconds on
a 500-character name. Rather than adding a second regex engine, `regex_problem` reads the
pattern's parse tree (the one `re` itself builds) and refuses, before anything is matched:

- a pattern longer than `MAX_REGEX_CHARS`;
- a repeat (`*`, `+`, `{m,n}` with n > 1) whose body contains another variable repeat or an
  alternation `|`: the shapes whose backtracking is exponential;
- more than `MAX_LOOPS` variable repeats that can repeat more than once, or more than
  `MAX_VARIABLE` variable repeats in all (`?` included): polynomial blow-up.

Plans only ever need patterns like `blocks\\.[0-3]\\..*`, `heads\\..*` or `.*attn\\.(q|k|v)`,
which pass. The check is a heuristic on the shape of the pattern, not a proof: it is
deliberately conservative, and the message points to a glob (`fnmatch` globs compile to
patterns that do not backtrack) or a simpler regex.
"""

from __future__ import annotations

import re

try:  # Python 3.11+
    from re import _constants as _c
    from re import _parser as _sre
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre  # type: ignore[no-redef]

MAX_REGEX_CHARS = 200
MAX_LOOPS = 3
MAX_VARIABLE = 6

_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT} | ({_c.POSSESSIVE_REPEAT} if hasattr(_c, "POSSESSIVE_REPEAT") else set())
_BRANCHES = {_c.BRANCH, _c.GROUPREF_EXISTS}
_HINT = "use a glob (blocks.[0-3].*) or a simpler regex"


class _Shape:
    """What the walk over the parse tree found."""

    def __init__(self) -> None:
        self.loops = 0  # variable repeats that can run more than once: *, +, {m,n} with n > 1
        self.variable = 0  # all variable repeats, ? included
        self.nested: str | None = None  # the first risky construct found inside a loop


def _subpatterns(arg):
    """Every parsed sub-pattern inside an opcode's argument (groups, branches, lookarounds)."""
    if isinstance(arg, _sre.SubPattern):
        yield arg
    elif isinstance(arg, (list, tuple)):
        for item in arg:
            yield from _subpatterns(item)


def _walk(sub, shape: _Shape, in_loop: bool) -> None:
    for op, arg in sub:
        if op in _REPEATS:
            lo, hi, body = arg
            if lo != hi:
                shape.variable += 1
                shape.loops += hi > 1
                if in_loop and shape.nested is None:
                    shape.nested = "a repeat inside a repeat"
            _walk(body, shape, in_loop or hi > 1)
        else:
            if op in _BRANCHES and in_loop and shape.nested is None:
                shape.nested = "an alternation (|) inside a repeat"
            for child in _subpatterns(arg):
                _walk(child, shape, in_loop)


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` (without its `re:` prefix) is refused, or None when it is safe to use."""
    if len(pattern) > MAX_REGEX_CHARS:
        return f"regular expression is {len(pattern)} characters long (at most {MAX_REGEX_CHARS}); {_HINT}"
    try:
        parsed = _sre.parse(pattern)
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        return f"bad regular expression ({exc})"
    shape = _Shape()
    _walk(parsed, shape, in_loop=False)
    if shape.nested:
        return f"regular expression has {shape.nested}, which can backtrack for minutes; {_HINT}"
    if shape.loops > MAX_LOOPS or shape.variable > MAX_VARIABLE:
        return (f"regular expression has too many repeats (at most {MAX_LOOPS} of *, +, {{m,n}} and "
                f"{MAX_VARIABLE} in all, ? included); {_HINT}")
    return None
