"""Outputs that respect the user's files: checked before any work, written all together or not at all.

`check_output_path` refuses, before a command does any work, an output that
is, holds or would overwrite one of the command's inputs, a file name that is
an existing folder (or a folder that is an existing file), and a place that
cannot be written. `OutputFolder` writes an output made of several files into
a hidden temporary folder and moves it into place only when every file is
there; any failure, Ctrl-C included, removes the temporary folder and the
parent folders the call created. Files of the user's that the tool did not
write are never deleted or replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import (
    WriteError,
    default_dir_mode,
    default_file_mode,
    make_parents,
    remove_empty_dirs,
    tmp_prefix,
    write_error,
)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def _check_name_lengths(out: Path, names: Iterable[str]) -> None:
    base = _existing_ancestor(out)
    limit = _name_max(base if base.is_dir() else base.parent)
    for part in [*Path(os.path.abspath(out)).parts, *names]:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{out}: a name in the path is {len(os.fsencode(part))} bytes long, over the file "
                            f"system's limit of {limit}; choose a shorter name")


def _check_writable(folder: Path, out: Path) -> None:
    """`folder` (or, when missing, the folder that would hold it) can receive new files."""
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise UserError(f"{out}: {base} is a file, not a folder; choose another output")
    if not os.access(base, os.W_OK | os.X_OK):
        read_only = hasattr(os, "ST_RDONLY") and os.statvfs(base).f_flag & os.ST_RDONLY
        reason = "read-only file system" if read_only else "permission denied"
        raise UserError(f"{out}: cannot write in {base} ({reason}); choose another output")


def check_output_path(out: str | Path, inputs: Iterable[str | Path | None], *, folder: bool = False,
                      files: Iterable[str] = (), inputs_inside_ok: bool = False) -> None:
    """Refuse, with one line naming the path and the fix, an output that would harm the user's files.

    Args:
        out: the output the user named: a file, or a folder with ``folder=True``.
        inputs: the command's input files and folders (None entries are skipped); symlinks are resolved.
        files: the names the command writes inside `out` (a folder), or beside `out` (a file's sidecars).
        inputs_inside_ok: a folder output may hold inputs (only `files` are then checked against them).
    """
    out, files = Path(out), list(files)
    _check_name_lengths(out, files)
    _check_writable(out if folder and out.is_dir() else out.parent, out)
    given = [Path(p) for p in inputs if p is not None]
    real_out = _real(out)
    for inp in given:
        if _real(inp) == real_out:
            raise UserError(f"{out} is also an input of this command; choose a different output")
        if folder and not inputs_inside_ok and real_out in _real(inp).parents:
            raise UserError(f"{out} holds the input {inp}; choose a different output folder")
    if folder and out.exists() and not out.is_dir():
        raise UserError(f"{out} is an existing file; give a folder for the output")
    if not folder and out.is_dir():
        raise UserError(f"{out} is an existing folder; give a file name for the output")
    planned = [(out if folder else out.parent) / name for name in files]
    for path in planned:
        real = _real(path)
        for inp in given:
            if _real(inp) == real:
                raise UserError(f"{path} would overwrite the input {inp}; choose a different output")
        if path.is_dir():
            raise UserError(f"{path} is an existing folder where the output writes a file; "
                            "move it or choose a different output")


def foreign_entries(folder: Path, known: Collection[str], limit: int = 2) -> list[str]:
    """Up to `limit` entries under `folder` (relative POSIX paths, files and folders) that are not in `known`."""
    found: list[str] = []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in sorted(dirs + names):
            if (rel / name).as_posix() not in known:
                found.append((rel / name).as_posix())
                if len(found) >= limit:  # enough to refuse: a user's big folder is not walked to the end
                    return found
        dirs[:] = [d for d in dirs if (rel / d).as_posix() in known]
    return found


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C for the few renames that put an output in place (main thread only)."""
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if caught:
            raise KeyboardInterrupt


class OutputFolder:
    """Write the files of one output into a temporary folder (the value of ``with``); put them in place on success.

    On success: a missing `dest` becomes the folder (one rename); an existing folder receives each file
    with `os.replace`, everything else in it left as it was; `stale` names (parts of an earlier output
    set this one supersedes) are removed from it. With `replaces` (the relative paths of an earlier
    output of this tool), an existing `dest` holding only those is swapped whole, and one holding
    anything else is refused. On any failure, Ctrl-C included: the temporary folder is removed, and
    so are the parent folders this call created, when empty. OSErrors a user can fix become one line.
    """

    def __init__(self, dest: str | Path, *, replaces: Collection[str] | None = None, stale: Iterable[str] = ()):
        self.dest = Path(dest)
        self._abs = Path(os.path.abspath(dest))
        self.replaces = None if replaces is None else set(replaces)
        self.stale = tuple(stale)
        self.path: Path | None = None
        self._created: list[Path] = []

    def _check_known(self) -> None:
        if self.replaces is not None and self._abs.is_dir():
            extra = foreign_entries(self._abs, self.replaces)
            if extra:
                more = ", ..." if len(extra) > 1 else ""
                raise UserError(f"{self.dest} exists and holds files this tool did not write ({extra[0]}{more}); "
                                "choose an empty or new folder")

    def __enter__(self) -> Path:
        dest = self._abs
        if os.path.lexists(dest) and not dest.is_dir():
            raise UserError(f"{self.dest} is an existing file; give a folder for the output")
        self._check_known()
        try:
            self._created = make_parents(dest.parent)
            inside = dest.is_dir() and self.replaces is None  # merging: stage inside, the parent may be read-only
            self.path = Path(tempfile.mkdtemp(prefix=tmp_prefix(dest.name) + "tmp-", dir=dest if inside else dest.parent))
        except OSError as exc:
            remove_empty_dirs(self._created)
            error = write_error(exc, self.dest)
            if error is None:
                raise
            raise error from None
        return self.path

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                with _interrupts_deferred():
                    self._commit()
            except BaseException as error:
                self._discard()
                translated = self._translate(error)
                if translated is error:
                    raise
                raise translated from None
            return False
        self._discard()
        translated = self._translate(exc)
        if translated is not exc:
            raise translated from None
        return False

    def _translate(self, exc: BaseException) -> BaseException:
        """A write failure named by the user's path instead of the temporary one."""
        if isinstance(exc, WriteError):
            return WriteError(self._public(exc.path), exc.reason)
        if isinstance(exc, OSError):
            name = exc.filename if isinstance(exc.filename, str) else None
            return write_error(exc, self._public(Path(name)) if name else self.dest) or exc
        return exc

    def _public(self, path: Path) -> Path:
        if self.path is not None:
            with contextlib.suppress(ValueError):
                return self.dest / Path(os.path.abspath(path)).relative_to(self.path)
        return path

    def _discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        remove_empty_dirs(self._created)

    def _commit(self) -> None:
        staging, dest = self.path, self._abs
        file_mode = default_file_mode()
        for root, _, names in os.walk(staging):  # libraries that save through mkstemp leave 0600 files
            for name in names:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), file_mode)
        os.chmod(staging, default_dir_mode())
        if not os.path.lexists(dest):
            os.rename(staging, dest)
        elif self.replaces is not None:
            self._check_known()  # again: files may have appeared while the output was being written
            self._swap(staging, dest)
        else:
            self._merge(staging, dest)

    def _swap(self, staging: Path, dest: Path) -> None:
        old = Path(tempfile.mkdtemp(prefix=tmp_prefix(dest.name) + "old-", dir=dest.parent))
        os.replace(dest, old)  # onto the empty folder mkdtemp made
        try:
            os.rename(staging, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _merge(self, staging: Path, dest: Path) -> None:
        journal: list[tuple[Path | None, Path, Path | None]] = []  # (moved from, target, saved old version)
        backup = Path(tempfile.mkdtemp(prefix=tmp_prefix(dest.name) + "old-", dir=staging))

        def save(target: Path) -> None:
            saved = backup / str(len(journal))
            os.replace(target, saved)
            journal.append((None, target, saved))

        def move(src: Path, dst: Path) -> None:
            for entry in sorted(src.iterdir()):
                if entry == backup:
                    continue
                target = dst / entry.name
                if entry.is_dir() and target.is_dir() and not target.is_symlink():
                    move(entry, target)
                    continue
                if target.is_dir() and not target.is_symlink():
                    raise UserError(f"{self.dest / target.relative_to(dest)} is an existing folder where the "
                                    "output writes a file; move it or choose a different output")
                if os.path.lexists(target):
                    save(target)
                os.replace(entry, target)
                journal.append((entry, target, None))

        try:
            produced = {p.relative_to(staging).as_posix() for p in staging.rglob("*")}
            for name in self.stale:
                if name not in produced and os.path.isfile(dest / name):
                    save(dest / name)
            move(staging, dest)
        except BaseException:
            for moved_from, target, saved in reversed(journal):
                with contextlib.suppress(OSError):
                    os.replace(target, moved_from) if moved_from else os.replace(saved, target)
            raise
        shutil.rmtree(staging, ignore_errors=True)  # empty folders and the replaced old versions
