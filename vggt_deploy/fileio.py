"""Atomic file writes: a temporary file in the same folder, then a rename.

Every output the project writes goes through here (or through a library's
own save into a temporary name), so an interrupted run never leaves a
half-written file behind under the real name.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, rendered in memory then written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | Path, obj: object) -> Path:
    """`obj` as indented JSON; NaN and infinity are refused (they are not JSON)."""
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")
