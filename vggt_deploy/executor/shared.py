"""Files and folders shared with tasks by content hash.

A `Shared` names an artifact (the FP32 ONNX, a range cache file, the eval
split, a model folder) by the sha256 of its content. In this process it is
just its path. On a Ray cluster the executor puts its bytes into the object
store once (`RayExecutor.share`), and the first task on a node that needs it
unpacks it into that node's store (``<cache>/shared/<digest>/<name>``,
checked against the digest, moved into place whole); every later task on the
node finds it there. Task keys use the digest, never the path, so the same
content in another folder is the same work.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import sha256_file
from vggt_deploy.paths import cache_dir


def store_dir() -> Path:
    """This node's store of shared artifacts (under the cache folder, VGGT_DEPLOY_CACHE)."""
    return cache_dir() / "shared"


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's files: relative paths and contents, in sorted order (empty folders ignored)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def pack(path: Path) -> bytes:
    """A file's bytes, or a folder as an uncompressed tar (names relative to the folder)."""
    if path.is_file():
        return path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            tar.add(child, arcname=child.relative_to(path).as_posix())
    return buf.getvalue()


@dataclass(frozen=True)
class Shared:
    """A file or folder addressed by content hash.

    Attributes:
        digest: sha256 of the file, or `folder_digest` of the folder.
        name: its file or folder name (kept in the store, since some readers look at names).
        origin: its path on the machine that shared it.
        is_dir: a folder.
        ref: the Ray object holding its packed bytes (None: used in place, this process only).
    """

    digest: str
    name: str
    origin: str
    is_dir: bool
    ref: Any = None

    @classmethod
    def of(cls, path: str | Path) -> Shared:
        path = Path(path)
        if path.is_dir():
            return cls(folder_digest(path), path.name, str(path.resolve()), True)
        if path.is_file():
            return cls(sha256_file(path), path.name, str(path.resolve()), False)
        raise UserError(f"{path}: not found (an input the analysis shares with its tasks)")

    def path(self) -> Path:
        """Where the artifact is on this node: in place, or unpacked into the store on first use."""
        if self.ref is None:
            return Path(self.origin)
        dest = store_dir() / self.digest / self.name
        if not dest.exists():
            self._materialize(dest)
        return dest

    def _materialize(self, dest: Path) -> None:
        import ray

        data = ray.get(self.ref)
        slot = dest.parent
        slot.parent.mkdir(parents=True, exist_ok=True)
        # Unpack beside the slot, check, then rename: a task killed here leaves only a temp folder,
        # and two tasks racing on one node both end with the same complete artifact.
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.digest[:16]}.", dir=slot.parent))
        try:
            target = tmp / self.name
            if self.is_dir:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                    tar.extractall(target, filter="data")
                got = folder_digest(target)
            else:
                target.write_bytes(data)
                got = hashlib.sha256(data).hexdigest()
            if got != self.digest:
                raise RuntimeError(f"shared artifact {self.name}: content hash {got[:12]} != {self.digest[:12]}")
            try:
                os.rename(tmp, slot)
            except OSError:
                if not dest.exists():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
