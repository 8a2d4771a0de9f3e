"""Where things are: shipped plans, the default model, calibration images, caches.

The package must work installed (not editable) from any working directory, so
nothing but package data is located from this file. Shipped plans are package
data (`vggt_deploy/plans/*.yaml`, read through `importlib.resources`). Models and
calibration images are looked up in this order:

1. an explicit option (`--model DIR`, a plan's absolute `calibration.images`);
2. the folder named by ``VGGT_DEPLOY_HOME`` (holding ``models/`` and ``calib_data/``);
3. the working directory (``./models/vggt_small``, ``./calib_data``), as in the Docker images' ``/app``;
4. the source checkout this package was imported from, when there is one.

A relative path written in a plan (``images: calib_data``) is taken from the
working directory when it exists there, else from steps 2 and 4.
Caches (generated eval splits, calibration ranges) live under ``VGGT_DEPLOY_CACHE``
or ``~/.cache/vggt-deploy``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from vggt_deploy.errors import UserError

HOME_ENV = "VGGT_DEPLOY_HOME"
CACHE_ENV = "VGGT_DEPLOY_CACHE"
DEFAULT_MODEL_NAME = "vggt_small"
PLAN_SUFFIX = ".yaml"


def _checkout_root() -> Path | None:
    """The source checkout (a folder with pyproject.toml above the package), or None when installed."""
    package = Path(str(resources.files("vggt_deploy")))
    root = package.parent
    return root if (root / "pyproject.toml").is_file() and (root / "models").is_dir() else None


def search_roots() -> list[Path]:
    """Folders that may hold ``models/`` and ``calib_data/``, in lookup order (steps 2-4)."""
    roots = []
    if os.environ.get(HOME_ENV):
        roots.append(Path(os.environ[HOME_ENV]))
    roots.append(Path.cwd())
    checkout = _checkout_root()
    if checkout is not None:
        roots.append(checkout)
    return roots


def default_model_dir() -> Path:
    """The embedded default model folder (``models/vggt_small``) found through the lookup order."""
    for root in search_roots():
        candidate = root / "models" / DEFAULT_MODEL_NAME
        if (candidate / "config.json").is_file():
            return candidate
    tried = ", ".join(str(r / "models" / DEFAULT_MODEL_NAME) for r in search_roots())
    raise UserError(f"the default model was not found (tried {tried}); pass --model DIR, run from a folder "
                    f"holding models/, or set {HOME_ENV}")


def resource(path: str | Path) -> Path:
    """A path written relative to the project (``calib_data``), resolved through the lookup order.

    Absolute paths and paths that exist relative to the working directory are returned as given;
    otherwise the first search root holding it wins. When none does, the path is returned unchanged
    so that the caller's "not found" error names what the user wrote.
    """
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    for root in search_roots():
        if (root / path).exists():
            return root / path
    return path


def shipped_plan_names() -> list[str]:
    """Names of the plans shipped as package data (``mixed``, ``int8``, ...)."""
    folder = resources.files("vggt_deploy") / "plans"
    return sorted(p.name[: -len(PLAN_SUFFIX)] for p in folder.iterdir() if p.name.endswith(PLAN_SUFFIX))


def shipped_plan(name: str) -> Path | None:
    """The file of a shipped plan by short name (``mixed`` or ``mixed.yaml``), or None."""
    stem = name[: -len(PLAN_SUFFIX)] if name.endswith(PLAN_SUFFIX) else name
    if stem not in shipped_plan_names():
        return None
    return Path(str(resources.files("vggt_deploy") / "plans" / f"{stem}{PLAN_SUFFIX}"))


def plan_path(value: str) -> Path:
    """A plan argument: an existing file, else a shipped plan's short name.

    Shipped plans are echoed as ``<shipped>/NAME.yaml`` sources elsewhere; a name that is neither
    is returned as a path so that the plan loader reports it as not found.
    """
    path = Path(value)
    if path.exists():
        return path
    shipped = shipped_plan(value)
    return shipped if shipped is not None else path


def cache_dir() -> Path:
    """Where generated splits and calibration ranges are kept (override with VGGT_DEPLOY_CACHE)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vggt-deploy"))


def calibration_cache_dir() -> Path:
    """The calibration range cache (keyed by model hash and calibration section)."""
    return cache_dir() / "calibration"
