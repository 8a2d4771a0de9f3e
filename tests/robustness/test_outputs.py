"""A user's files are sacred: outputs never replace inputs or foreign files, and appear whole or not at all.

Every refused case goes through the real CLI in-process and must answer exit code 2 with exactly one
`error: ` line, leave the inputs byte-identical and the user's other files in place, and leave no
temporary or empty folder behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import WriteError, atomic_write_bytes, atomic_write_text
from vggt_deploy.outputs import OutputFolder, check_output_path

ROOT = os.geteuid() == 0  # root ignores permission bits: a path under a regular file stands in for a read-only folder
LONG = "n" * 300  # over every file system's NAME_MAX (255)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _snapshot(*roots: Path) -> dict[str, bytes | str | None]:
    """Every file (its bytes) and folder (None) under `roots`: equal snapshots mean nothing was touched."""
    out: dict[str, bytes | str | None] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                out[str(path)] = os.readlink(path)
            else:
                out[str(path)] = None if path.is_dir() else path.read_bytes()
    return out


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _leftovers(root: Path) -> list[str]:
    """Temporary folders of the atomic writers, and empty folders, anywhere under `root`."""
    bad = []
    for path in root.rglob("*"):
        if ".tmp" in path.name or ".old-" in path.name or path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            bad.append(str(path))
    return bad


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture()
def fx(tmp_path, tiny_model_dir, tiny_export, tiny_data, tiny_plan_text):
    """Inputs laid out in tmp_path: an image D/scene.png, an ONNX copy m.onnx, a plan, a user's notes."""
    image_dir = tmp_path / "D"
    image_dir.mkdir()
    image = shutil.copy(min((tiny_data / "images").iterdir()), image_dir / "scene.png")
    onnx = shutil.copy(tiny_export.fp32, tmp_path / "m.onnx")
    plan = tmp_path / "plan.yaml"
    plan.write_text(tiny_plan_text)
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file\n")
    if ROOT:
        unwritable = tmp_path / "somefile.txt"
        unwritable.write_text("a regular file\n")
    else:
        unwritable = tmp_path / "readonly"
        unwritable.mkdir()
        (unwritable / "keep.txt").write_text("kept\n")
        unwritable.chmod(0o555)
    yield SimpleNamespace(t=tmp_path, model=tiny_model_dir, image=Path(image), onnx=Path(onnx), plan=plan, notes=notes,
                          unwritable=unwritable, long=tmp_path / LONG)
    if not ROOT:
        unwritable.chmod(0o755)


def _folder_with(path: Path, *entries: str, dirs: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in entries:
        (path / name).write_text(f"user file {name}\n")
    for name in dirs:
        (path / name).mkdir(parents=True)
        (path / name / "inside.txt").write_text("user file\n")
    return path


def _infer(fx, out, image=None):
    return ["infer", "--model", fx.model, "--image", image or fx.image, "-q", "red circle", "-o", out]


def _build(fx, out, onnx=None):
    return ["build-ort", "--onnx", onnx or fx.onnx, "-o", out]


def _export_onnx(fx, out, onnx=None):
    return ["export", "--onnx", onnx or fx.onnx, "--plan", fx.plan, "-o", out]


def _export_model(fx, out, plan=False):
    return ["export", "--model", fx.model, *(["--plan", fx.plan] if plan else []), "-o", out]


def _calib(out):
    return ["data", "calib", "-n", "2", "-o", out]


def _generate(out):
    return ["data", "generate", "--split", "calib", "-n", "2", "-o", out]


def _maps(fx, out):
    return ["maps", "--model", fx.model, "--image", fx.image, "-q", "red circle", "-o", out]


def _previous_calib(path: Path) -> Path:
    from vggt_deploy.data.calib_set import write_calibration_set

    return write_calibration_set(path, 2)


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _export_into_a_folder_whose_model_onnx_links_to_the_input(fx):
    out = _folder_with(fx.t / "O")
    _symlink(out / "model.onnx", fx.onnx)
    return _export_onnx(fx, out)


# case id -> (fx -> CLI arguments, text the error line must contain)
CASES = {
    # infer: JSON + PNG named after the image, into a folder
    "infer/out-folder-holds-the-image": (lambda fx: _infer(fx, fx.image.parent), "would overwrite the input"),
    "infer/out-folder-symlinks-to-the-image-folder": (
        lambda fx: _infer(fx, _symlink(fx.t / "E", fx.image.parent)), "would overwrite the input"),
    "infer/out-is-the-image": (lambda fx: _infer(fx, fx.image), "is also an input"),
    "infer/out-is-the-model-folder": (lambda fx: _infer(fx, fx.model), "is also an input"),
    "infer/out-is-an-existing-file": (lambda fx: _infer(fx, fx.notes), "is an existing file"),
    "infer/json-name-is-a-folder": (
        lambda fx: _infer(fx, _folder_with(fx.t / "O", "keep.txt", dirs=("scene.json",))), "is an existing folder"),
    "infer/png-name-is-a-folder": (
        lambda fx: _infer(fx, _folder_with(fx.t / "O", dirs=("scene.png",))), "is an existing folder"),
    "infer/unwritable-parent": (lambda fx: _infer(fx, fx.unwritable / "out"), "choose another output"),
    "infer/under-a-file": (lambda fx: _infer(fx, fx.notes / "out"), "is a file, not a folder"),
    "infer/name-too-long": (lambda fx: _infer(fx, fx.long), "limit of"),
    # build-ort: OUT and OUT.json
    "build-ort/out-is-the-input": (lambda fx: _build(fx, fx.onnx), "is also an input"),
    "build-ort/out-symlinks-to-the-input": (lambda fx: _build(fx, _symlink(fx.t / "link.onnx", fx.onnx)),
                                            "is also an input"),
    "build-ort/sidecar-would-overwrite-the-input": (
        lambda fx: _build(fx, fx.t / "x.onnx", shutil.copy(fx.onnx, fx.t / "x.onnx.json")), "would overwrite the input"),
    "build-ort/out-is-an-existing-folder": (lambda fx: _build(fx, _folder_with(fx.t / "O", "keep.txt")),
                                            "is an existing folder"),
    "build-ort/sidecar-name-is-a-folder": (
        lambda fx: _build(fx, _folder_with(fx.t / "O", dirs=("opt.onnx.json",)) / "opt.onnx"), "is an existing folder"),
    "build-ort/unwritable-parent": (lambda fx: _build(fx, fx.unwritable / "opt.onnx"), "choose another output"),
    "build-ort/under-a-file": (lambda fx: _build(fx, fx.notes / "opt.onnx"), "is a file, not a folder"),
    "build-ort/name-too-long": (lambda fx: _build(fx, fx.t / (LONG + ".onnx")), "limit of"),
    # export: a folder of model.onnx, queries.*, export.json, model.qdq.onnx, report.json
    "export-onnx/out-holds-the-input": (lambda fx: _export_onnx(fx, fx.t), "holds the input"),
    "export-onnx/out-is-the-input": (lambda fx: _export_onnx(fx, fx.onnx), "is also an input"),
    "export-onnx/model-onnx-symlinks-to-the-input": (_export_into_a_folder_whose_model_onnx_links_to_the_input,
                                                     "would overwrite the input"),
    "export-onnx/out-is-the-plan": (lambda fx: _export_onnx(fx, fx.plan), "is also an input"),
    "export-model/out-is-the-model-folder": (lambda fx: _export_model(fx, fx.model), "is also an input"),
    "export-model/out-holds-the-model-folder": (lambda fx: _export_model(fx, fx.model.parent), "holds the input"),
    "export-model/out-is-an-existing-file": (lambda fx: _export_model(fx, fx.notes), "is an existing file"),
    "export-model/model-onnx-is-a-folder": (
        lambda fx: _export_model(fx, _folder_with(fx.t / "O", dirs=("model.onnx",))), "is an existing folder"),
    "export-model/unwritable-parent": (lambda fx: _export_model(fx, fx.unwritable / "out"), "choose another output"),
    "export-model/under-a-file": (lambda fx: _export_model(fx, fx.notes / "out"), "is a file, not a folder"),
    "export-model/name-too-long": (lambda fx: _export_model(fx, fx.long), "limit of"),
    # data calib / data generate: a whole folder, replaced only when this tool wrote all of it
    "calib/folder-with-a-users-file": (lambda fx: _calib(_folder_with(fx.t / "O", "photo.jpg")),
                                       "holds files this tool did not write"),
    "calib/earlier-set-plus-a-users-file": (
        lambda fx: _calib(_folder_with(_previous_calib(fx.t / "O"), "notes.md")), "holds files this tool did not write"),
    "calib/a-users-manifest": (lambda fx: _calib(_folder_with(fx.t / "O", "manifest.json")),
                               "holds files this tool did not write"),
    "calib/a-generated-coco-split": (lambda fx: _calib(_generated_split(fx.t / "O")), "holds files this tool did not write"),
    "calib/out-is-an-existing-file": (lambda fx: _calib(fx.notes), "is an existing file"),
    "calib/out-is-the-image": (lambda fx: _calib(fx.image), "is an existing file"),
    "calib/unwritable-parent": (lambda fx: _calib(fx.unwritable / "c"), "choose another output"),
    "calib/under-a-file": (lambda fx: _calib(fx.notes / "c"), "is a file, not a folder"),
    "calib/name-too-long": (lambda fx: _calib(fx.long), "limit of"),
    "generate/folder-with-a-users-file": (lambda fx: _generate(_folder_with(fx.t / "O", "instances.json")),
                                          "holds files this tool did not write"),
    "generate/a-calibration-set": (lambda fx: _generate(_previous_calib(fx.t / "O")),
                                   "holds files this tool did not write"),
    "generate/out-is-an-existing-file": (lambda fx: _generate(fx.notes), "is an existing file"),
    "generate/name-too-long": (lambda fx: _generate(fx.long), "limit of"),
    # maps: one PNG
    "maps/out-is-the-image": (lambda fx: _maps(fx, fx.image), "is also an input"),
    "maps/out-is-an-existing-folder": (lambda fx: _maps(fx, _folder_with(fx.t / "O", "keep.txt")),
                                       "is an existing folder"),
    "maps/unwritable-parent": (lambda fx: _maps(fx, fx.unwritable / "maps.png"), "choose another output"),
    "maps/name-too-long": (lambda fx: _maps(fx, fx.t / (LONG + ".png")), "limit of"),
    # train: a model folder
    "train/out-is-an-existing-file": (lambda fx: ["train", "-o", fx.notes, "--steps", "1"], "is an existing file"),
    "train/under-a-file": (lambda fx: ["train", "-o", fx.notes / "m", "--steps", "1"], "is a file, not a folder"),
}


def _generated_split(path: Path) -> Path:
    from vggt_deploy.data.coco import write_split

    return write_split(path, "calib", 2, progress=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_output_is_refused_and_nothing_is_touched(case, fx):
    build_args, needle = CASES[case]
    args = build_args(fx)
    outside = [fx.model, Path(fx.model).parent]
    before = _snapshot(fx.t, *outside)
    line = _one_error_line(_run(*args))
    assert needle in line, line
    assert _snapshot(fx.t, *outside) == before  # inputs byte-identical, the user's files there, nothing new
    assert fx.notes.read_text() == "a user's file\n"
    assert not _leftovers(fx.t)


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


# ---- failures in the middle of a write -------------------------------------------------------------------------


def test_export_failing_after_the_fp32_export_leaves_nothing(fx, monkeypatch):
    from vggt_deploy.quant import qdq

    def broken(*args, **kwargs):
        raise UserError("calibration failed on purpose")

    monkeypatch.setattr(qdq, "quantize", broken)
    out = fx.t / "new" / "deeper" / "out"
    before = _snapshot(fx.t)
    result = _run(*_export_model(fx, out, plan=True))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip() and "img/s" not in line]  # tqdm bars
    assert lines == ["error: calibration failed on purpose"], result.output
    assert not (fx.t / "new").exists()  # no model.onnx without its QDQ model, no empty parent folders
    assert _snapshot(fx.t) == before and not _leftovers(fx.t)


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    """A single-input image model exported elsewhere, with a plan for it (quick to quantize)."""
    import torch

    folder = tmp_path_factory.mktemp("foreign")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 16 * 16, 5)).eval()
    onnx_file = folder / "foreign.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(onnx_file), dynamo=True, input_names=["pixels"],
                      verbose=False).save(str(onnx_file))
    plan = folder / "foreign.yaml"
    plan.write_text("version: 1\ntarget: onnxruntime-cpu\ncalibration:\n  method: minmax\n  images: calib_data\n"
                    "  num_images: 2\n  input: {name: pixels, size: 16, mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}\n"
                    "default: {precision: int8}\n")
    return onnx_file, plan


def test_ctrl_c_during_export_keeps_the_earlier_output_and_the_users_files(foreign_onnx, tmp_path, monkeypatch):
    from vggt_deploy.quant import qdq

    onnx_file, plan = foreign_onnx
    out = tmp_path / "out"
    assert _run("export", "--onnx", onnx_file, "--plan", plan, "-o", out).exit_code == 0
    (out / "notes.txt").write_text("mine\n")
    before = _snapshot(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qdq, "quantize", interrupted)
    result = _run("export", "--onnx", onnx_file, "--plan", plan, "-o", out)
    assert result.exit_code == 1 and "Aborted" in result.output  # click's answer to Ctrl-C
    assert _snapshot(tmp_path) == before and not _leftovers(tmp_path)


def test_a_failure_while_the_set_is_moved_in_rolls_it_back(tmp_path, monkeypatch):
    dest = _folder_with(tmp_path / "out", "a.txt", "user.txt")
    before = _snapshot(tmp_path)
    real_replace = os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # a.txt saved, a.txt moved in, then b.txt fails
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    with pytest.raises(WriteError, match="no space left"), OutputFolder(dest) as tmp:
        atomic_write_text(tmp / "a.txt", "new a")
        atomic_write_text(tmp / "b.txt", "new b")
        monkeypatch.setattr(os, "replace", replace_then_fail)
    monkeypatch.setattr(os, "replace", real_replace)
    assert _snapshot(tmp_path) == before and not _leftovers(tmp_path)


# ---- what is allowed, and the permissions of what is written ----------------------------------------------------


def test_infer_into_a_folder_with_other_files_keeps_them(fx, umask022):
    out = _folder_with(fx.t / "O", "scene.txt", "other.png")
    result = _run(*_infer(fx, out))
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"scene.txt", "other.png", "scene.json", "scene.png"}
    assert (out / "scene.txt").read_text() == "user file scene.txt\n"
    assert all(stat.S_IMODE((out / n).stat().st_mode) == 0o644 for n in ("scene.json", "scene.png"))
    assert not _leftovers(fx.t)


def test_build_ort_writes_model_and_sidecar_with_ordinary_permissions(fx, umask022):
    out = _folder_with(fx.t / "O", "keep.txt") / "opt.onnx"
    result = _run(*_build(fx, out))
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.parent.iterdir()} == {"keep.txt", "opt.onnx", "opt.onnx.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.parent.iterdir())
    assert not _leftovers(fx.t)


def test_export_files_get_ordinary_permissions_and_replace_the_earlier_set(foreign_onnx, tmp_path, umask022):
    onnx_file, plan = foreign_onnx
    out = _folder_with(tmp_path / "out", "readme.md")
    (out / "model.onnx").write_text("an earlier export's FP32 model")
    (out / "export.json").write_text("{}")
    result = _run("export", "--onnx", onnx_file, "--plan", plan, "-o", out)
    assert result.exit_code == 0, result.output
    # model.onnx belonged to the earlier set (export.json marks it) and no longer matches: removed with it.
    assert {p.name for p in out.iterdir()} == {"readme.md", "export.json", "model.qdq.onnx", "report.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.iterdir())
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert not _leftovers(tmp_path)


def test_calib_replaces_only_its_own_earlier_set(tmp_path, umask022):
    out = tmp_path / "calib"
    assert _run("data", "calib", "-n", "3", "-o", out).exit_code == 0
    result = _run("data", "calib", "-n", "2", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["calib_0000.jpg", "calib_0001.jpg", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["num_images"] == 2
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run("data", "calib", "-n", "1", "-o", empty).exit_code == 0
    assert not _leftovers(tmp_path)


def test_generate_replaces_only_its_own_earlier_split(tmp_path):
    out = tmp_path / "split"
    assert _run("data", "generate", "--split", "eval", "-n", "3", "-o", out).exit_code == 0
    assert _run("data", "generate", "--split", "eval", "-n", "2", "-o", out).exit_code == 0
    assert len(list((out / "images").iterdir())) == 2 and not _leftovers(tmp_path)


def test_plan_auto_refuses_to_overwrite_its_base_plan_before_measuring(tmp_path, tiny_plan_text):
    from vggt_deploy.quant.plan import parse_plan
    from vggt_deploy.tuning.auto_plan import AutoConfig, auto_plan

    base = tmp_path / "base.yaml"
    base.write_text(tiny_plan_text)
    bench = SimpleNamespace(base=parse_plan(tiny_plan_text, str(base)))  # nothing to measure with: must stop first
    with pytest.raises(UserError, match="is also an input"):
        auto_plan(bench, AutoConfig(max_map_drop=0.01), base)
    other = tmp_path / "other.md"  # a base plan named like the .md summary of the plan asked for
    other.write_text(tiny_plan_text)
    bench = SimpleNamespace(base=parse_plan(tiny_plan_text, str(other)))
    with pytest.raises(UserError, match="would overwrite the input"):
        auto_plan(bench, AutoConfig(max_map_drop=0.01), tmp_path / "other.yaml")
    assert base.read_text() == other.read_text() == tiny_plan_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "other.md"]


# ---- the folder context manager and the file writer ------------------------------------------------------------


def test_new_folder_appears_whole(tmp_path, umask022):
    dest = tmp_path / "a" / "b" / "out"
    with OutputFolder(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".out.tmp-")
        atomic_write_text(tmp / "x.txt", "x")
        (tmp / "sub").mkdir()
        atomic_write_bytes(tmp / "sub" / "y.bin", b"y")
        assert not dest.exists()
    assert (dest / "x.txt").read_text() == "x" and (dest / "sub" / "y.bin").read_bytes() == b"y"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, UserError, RuntimeError])
def test_failure_removes_the_temporary_folder_and_created_parents(tmp_path, failure):
    _folder_with(tmp_path / "a", "keep.txt")
    before = _snapshot(tmp_path)
    with pytest.raises(failure), OutputFolder(tmp_path / "a" / "b" / "c" / "out") as tmp:
        atomic_write_text(tmp / "x.txt", "x")
        raise failure("stop")
    assert _snapshot(tmp_path) == before and not _leftovers(tmp_path)


def test_existing_folder_receives_files_and_keeps_the_rest(tmp_path):
    dest = _folder_with(tmp_path / "out", "user.txt", "x.txt", dirs=("sub",))
    with OutputFolder(dest) as tmp:
        assert tmp.parent == dest  # staged inside: the parent of an existing folder may be read-only
        atomic_write_text(tmp / "x.txt", "new x")
        (tmp / "sub").mkdir()
        atomic_write_text(tmp / "sub" / "y.txt", "y")
    assert (dest / "x.txt").read_text() == "new x" and (dest / "user.txt").read_text() == "user file user.txt\n"
    assert (dest / "sub" / "inside.txt").read_text() == "user file\n" and (dest / "sub" / "y.txt").read_text() == "y"
    assert not _leftovers(tmp_path)


def test_stale_files_of_an_earlier_set_are_removed(tmp_path):
    dest = _folder_with(tmp_path / "out", "user.txt", "report.json")
    with OutputFolder(dest, stale=["report.json"]) as tmp:
        atomic_write_text(tmp / "model.onnx", "m")
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "user.txt"]


def test_owned_folder_is_swapped_whole_and_a_foreign_one_refused(tmp_path):
    dest = _folder_with(tmp_path / "out", "a.txt", "b.txt")
    with OutputFolder(dest, replaces={"a.txt", "b.txt"}) as tmp:
        atomic_write_text(tmp / "a.txt", "new")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]
    (dest / "user.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files this tool did not write \(user.txt\)"):
        OutputFolder(dest, replaces={"a.txt"}).__enter__()
    assert not _leftovers(tmp_path)


def test_a_file_appearing_during_the_write_stops_the_swap(tmp_path):
    dest = _folder_with(tmp_path / "out", "a.txt")
    with pytest.raises(UserError, match="did not write"), OutputFolder(dest, replaces={"a.txt"}) as tmp:
        atomic_write_text(tmp / "a.txt", "new")
        (dest / "late.txt").write_text("written meanwhile by the user")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "late.txt"]
    assert (dest / "a.txt").read_text() == "user file a.txt\n" and not _leftovers(tmp_path)


def test_an_existing_folder_in_the_way_rolls_the_set_back(tmp_path):
    dest = _folder_with(tmp_path / "out", "a.txt", dirs=("b.txt",))
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="b.txt is an existing folder"), OutputFolder(dest) as tmp:
        atomic_write_text(tmp / "a.txt", "new a")
        atomic_write_text(tmp / "b.txt", "new b")
    assert _snapshot(tmp_path) == before and not _leftovers(tmp_path)


def test_os_errors_inside_name_the_real_output(tmp_path):
    with pytest.raises(WriteError) as info, OutputFolder(tmp_path / "out") as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.onnx"))
    assert str(info.value) == f"{tmp_path / 'out' / 'model.onnx'}: cannot write (no space left on the device); " \
                              "choose another output"
    assert not _leftovers(tmp_path) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert os.umask(mask) == mask  # reading the umask left it as it was
    finally:
        os.umask(old)


@pytest.mark.parametrize("where, reason", [("file/x.txt", "not a folder"), (f"{LONG}/x.txt", "file name too long"),
                                           ("dir", "existing folder")])
def test_atomic_write_failures_are_one_line_and_leave_no_folder(tmp_path, where, reason):
    (tmp_path / "file").write_text("a file")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep").write_text("k")
    before = _snapshot(tmp_path)
    with pytest.raises(WriteError, match=reason):
        atomic_write_text(tmp_path / where, "x")
    assert _snapshot(tmp_path) == before


def test_check_output_path_resolves_symlinks_both_ways(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "in.png").write_bytes(b"img")
    link = _symlink(tmp_path / "link", real)
    with pytest.raises(UserError, match="would overwrite the input"):
        check_output_path(real, [link / "in.png"], folder=True, files=["in.png"], inputs_inside_ok=True)
    with pytest.raises(UserError, match="holds the input"):
        check_output_path(link, [real / "in.png"], folder=True)
    check_output_path(link, [real / "in.png"], folder=True, files=["in.json"], inputs_inside_ok=True)
    check_output_path(tmp_path / "new" / "deeper" / "f.onnx", [real / "in.png"])
