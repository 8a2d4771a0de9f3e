"""Atomic file writes: a temporary file in the same folder, then a rename.

Every output the project writes goes through here (or through a library's
own save into a temporary name), so an interrupted run never leaves a
half-written file behind under the real name. Files get ordinary permissions
(0666 less the umask), not the 0600 of a bare `tempfile.mkstemp`. A write the
system refuses (no permission, read-only file system, full disk, a name too
long, a file where a folder should be) becomes one `UserError` naming the path.
Outputs made of several files are written together by `vggt_deploy.outputs`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from vggt_deploy.errors import UserError

# errno -> the reason a user reads; any other OSError is a bug and keeps its traceback.
WRITE_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is an existing folder",
}
TMP_NAME_CHARS = 200  # temporary names keep at most this much of the real name, so they stay under NAME_MAX


class WriteError(UserError):
    """A write the system refused: `path` (what the user asked for) and the `reason`."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: cannot write ({reason}); choose another output")
        self.path, self.reason = Path(path), reason


def write_error(exc: OSError, path: str | Path) -> WriteError | None:
    """The `WriteError` for `exc` when it is a user's problem (see WRITE_ERRORS), else None."""
    reason = WRITE_ERRORS.get(exc.errno)
    return None if reason is None else WriteError(path, reason)


def _umask() -> int:
    old = os.umask(0)
    try:
        return old
    finally:
        os.umask(old)


def default_file_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode `mkdir` would give a new folder: 0777 less the umask."""
    return 0o777 & ~_umask()


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created, deepest first."""
    missing = []
    path = Path(folder)
    while not os.path.lexists(path) and path.parent != path:
        missing.append(path)
        path = path.parent
    created: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # created meanwhile by someone else: not ours to remove
                continue
            created.insert(0, path)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return created


def remove_empty_dirs(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty; stops at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def tmp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of `name` (hidden, short enough for any file system)."""
    return f".{name[:TMP_NAME_CHARS]}."


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    created: list[Path] = []
    tmp = None
    try:
        created = make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), default_file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        remove_empty_dirs(created)
        error = write_error(exc, path) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from None
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


def sha256_file(path: str | Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks so large weights never sit in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
