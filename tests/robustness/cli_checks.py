"""What every bad-input case checks: one `error:` line, exit 2, inputs untouched, no output created."""

from __future__ import annotations

import re
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, object]:
    """Every file under `roots` with its bytes (files of 64 MiB and more, or unreadable ones: their
    size, mtime and mode), folders as markers."""
    snap: dict[str, object] = {}
    for root in roots:
        root = Path(root)
        for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if p.is_dir():
                snap[str(p)] = "dir"
            elif p.is_file():
                st = p.stat()
                try:
                    snap[str(p)] = p.read_bytes() if st.st_size < 2**26 else (st.st_size, st.st_mtime_ns)
                except PermissionError:
                    snap[str(p)] = (st.st_size, st.st_mtime_ns, st.st_mode)
            else:
                snap[str(p)] = "missing" if not p.exists() else "other"
    return snap


def assert_user_error(result, expect: str, before: dict, inputs: list[Path], out: Path) -> None:
    """Exit 2 without a traceback, one `error:` line matching `expect`, inputs as `before`, `out` absent."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(expect, lines[0]), f"{expect!r} not in {lines[0]!r}"
    assert snapshot(*inputs) == before, "an input was modified"
    assert not out.exists(), f"{out} was created"
