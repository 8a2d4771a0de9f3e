"""The package works installed (not editable) from any working directory (issue 10).

A wheel is built from a copy of the sources, installed with ``pip install --target`` into a
temporary folder and run with ``PYTHONPATH`` pointing there, from a folder that holds only
links to the repository's ``models/`` and ``calib_data/``. ``PYTHONPATH`` entries come before
site-packages and the editable install's finder is appended to ``sys.meta_path`` after the
path finder, so the installed copy wins; the first test checks that it really does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout under test: its sources, models/ and calib_data/
TIMEOUT = 600

pytestmark = pytest.mark.slow


class Installed:
    """The wheel installed under ``site``; runs the command line with it from a given folder."""

    def __init__(self, root: Path):
        self.root = root
        self.site = root / "site"
        self.cache = root / "cache"

    def env(self, home: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VGGT_DEPLOY_HOME")}
        env["PYTHONPATH"] = str(self.site)
        env["VGGT_DEPLOY_CACHE"] = str(self.cache)
        env["PYTHONNOUSERSITE"] = "1"
        if home is not None:
            env["VGGT_DEPLOY_HOME"] = str(home)
        return env

    def python(self, cwd: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=self.env(home), capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)

    def cli(self, cwd: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess:
        return self.python(cwd, "-m", "vggt_deploy.cli", *args, home=home)


def _pip_install_wheel(root: Path) -> Path:
    """Build a wheel from a copy of the sources (the checkout is left untouched) and install it."""
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "vggt_deploy", src / "vggt_deploy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = root / "dist"
    # --no-isolation: build with the venv's setuptools (no download). --skip-dependency-check: the
    # build-system also lists `wheel`, which setuptools >= 70.1 no longer needs to build a wheel.
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
                            "-o", str(dist), str(src)], cwd=root, capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("vggt_deploy-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--target", str(root / "site"), str(wheel)],
                             capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    _pip_install_wheel(root)
    return Installed(root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding only (links to) the repository's models/ and calib_data/."""
    folder = tmp_path_factory.mktemp("work")
    for name in ("models", "calib_data"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)
    return folder


def test_the_installed_copy_is_imported_not_the_checkout(installed, workdir):
    probe = ("import json, vggt_deploy, vggt_deploy.cli, vggt_deploy.paths as p; "
             "print(json.dumps([vggt_deploy.__file__, vggt_deploy.cli.__file__, "
             "str(p._checkout_root()), p.shipped_plan_names()]))")
    result = installed.python(workdir, "-c", probe)
    assert result.returncode == 0, result.stderr
    package, cli, checkout, plans = json.loads(result.stdout)
    site = installed.site.resolve()
    assert Path(package).resolve().is_relative_to(site), package
    assert Path(cli).resolve().is_relative_to(site), cli
    assert checkout == "None"  # no source checkout to fall back on: models come from the working directory
    assert "mixed" in plans  # the shipped plans came along as package data


def test_installed_plan_show_export_and_eval(installed, workdir):
    shown = installed.cli(workdir, "plan", "show", "--plan", "mixed")
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first.startswith("plan ") and str(installed.site / "vggt_deploy" / "plans" / "mixed.yaml") in first
    assert any(line.split()[:1] == ["layer"] for line in shown.stdout.splitlines())
    assert "heads.cls.fc" in shown.stdout

    exported = installed.cli(workdir, "export", "--plan", "mixed", "-o", "out")
    assert exported.returncode == 0, exported.stderr[-3000:]
    out = workdir / "out"
    assert (out / "model.qdq.onnx").is_file() and (out / "report.json").is_file()

    evaluated = installed.cli(workdir, "eval", "--onnx", "out/model.qdq.onnx", "--eval-images", "8", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["num_images"] == 8 and 0.0 <= metrics["map"] <= 1.0

    # From elsewhere, VGGT_DEPLOY_HOME finds the model folder.
    elsewhere = installed.root / "elsewhere"
    elsewhere.mkdir()
    with_home = installed.cli(elsewhere, "eval", "--onnx", str(out / "model.qdq.onnx"), "--eval-images", "8",
                              "--json", home=workdir)
    assert with_home.returncode == 0, with_home.stderr[-3000:]
    assert json.loads(with_home.stdout.strip().splitlines()[-1])["map"] == metrics["map"]


def test_installed_without_models_names_vggt_deploy_home(installed, tmp_path):
    result = installed.cli(tmp_path, "eval", "--eval-images", "8", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "VGGT_DEPLOY_HOME" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
