"""Broken ONNX files and calibration tensors through the real CLI: one `error:` line, exit 2, nothing touched.

ONNX files go to `build-ort`, `export --onnx`, `eval --onnx` and `infer --onnx`; `.npy` calibration
tensors go to `export --onnx` with a plan whose `calibration.input.npy_dir` names the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_checks import assert_user_error, snapshot
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from vggt_deploy.cli import main

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "calib_data" / "calib_0000.jpg"
SIZE = 16  # the foreign model's input side


# --------------------------------------------------------------------------- helpers


def _graph_model(nodes, inputs, outputs, opsets, initializers=(), ir_version=10) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir_version
    return model


def _foreign_model() -> onnx.ModelProto:
    """A single-input image model made elsewhere: Conv + Relu + global average pool on 'pixels'."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("Conv", ["pixels", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["scores"], name="pool")]
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 1, 1])
    return _graph_model(nodes, [x], [y], [("", 17)], [w, b])


def _relu(opsets=(("", 17),), outputs=True, op="Relu", domain="", ir_version=10) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    return _graph_model([node], [x], [y] if outputs else [], opsets, ir_version=ir_version)


def _image_decoder() -> onnx.ModelProto:
    """A valid ONNX op (opset 20) that ONNX Runtime has no kernel for."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [None])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [None, None, 3])
    return _graph_model([helper.make_node("ImageDecoder", ["x"], ["y"])], [x], [y], [("", 20)], ir_version=9)


def _save(model: onnx.ModelProto):
    def make(tmp: Path, fp32: Path) -> Path:
        path = tmp / "bad.onnx"
        onnx.save(model, str(path))
        return path

    return make


def _bytes(data):
    def make(tmp: Path, fp32: Path) -> Path:
        path = tmp / "bad.onnx"
        path.write_bytes(data(fp32.read_bytes()) if callable(data) else data)
        return path

    return make


def _missing(tmp: Path, fp32: Path) -> Path:
    return tmp / "absent.onnx"


def _folder(tmp: Path, fp32: Path) -> Path:
    (tmp / "model.onnx").mkdir()
    return tmp / "model.onnx"


def _over_2gb(tmp: Path, fp32: Path) -> Path:
    path = tmp / "huge.onnx"
    with open(path, "wb") as f:  # sparse: no disk or memory used
        f.truncate(2**31 + 1024)
    return path


def _external_data_missing(tmp: Path, fp32: Path) -> Path:
    path = tmp / "ext.onnx"
    onnx.save(_foreign_model(), str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp / "ext.onnx.data").unlink()
    return path


def _with_tiny_metadata(model: onnx.ModelProto):
    """`model` stamped with the tiny export's metadata, so eval --onnx gets as far as ONNX Runtime."""

    def make(tmp: Path, fp32: Path) -> Path:
        meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        path = tmp / "custom.onnx"
        onnx.save(model, str(path))
        return path

    return make


NOT_ONNX = r"not a valid ONNX model \("

LOAD_CASES = [
    ("missing", _missing, r"absent\.onnx: ONNX file not found"),
    ("folder", _folder, r"model\.onnx: is a folder; give the \.onnx file inside it"),
    ("empty", _bytes(b""), r"bad\.onnx: empty file \(0 bytes\), not an ONNX model"),
    ("garbage", _bytes(b"not onnx at all \x00\x01\x02"), r"bad\.onnx: " + NOT_ONNX),
    ("text", _bytes(b"version: 1\ntarget: tensorrt\n"), r"bad\.onnx: " + NOT_ONNX),
    ("truncated", _bytes(lambda b: b[: len(b) // 2]), r"bad\.onnx: " + NOT_ONNX),
    ("over_2gb", _over_2gb, (r"huge\.onnx: 2\.0 GB in one file; protobuf cannot read an ONNX file of 2 GB or "
                             r"more: save it with its weights as external data")),
    ("external_data_missing", _external_data_missing, r"ext\.onnx: " + NOT_ONNX),
    ("opset_99", _save(_relu(opsets=(("", 99),))),
     r"bad\.onnx: opset 99 is newer than the installed onnx \S+ supports \(up to \d+\); re-export with opset"),
    ("ir_version_99", _save(_relu(ir_version=99)), r"bad\.onnx: ONNX IR version 99 is newer than the installed onnx"),
    ("no_outputs", _save(_relu(outputs=False)), r"bad\.onnx: the graph has no outputs, so there is nothing to run"),
    ("unknown_op", _save(_relu(op="Frobnicate")), r"bad\.onnx: " + NOT_ONNX + r"ValidationError: No Op registered for Frobnicate"),
]


def _case_ids(cases):
    return [pytest.param(*c[1:], id=c[0]) for c in cases]


@pytest.mark.parametrize("make, expect", _case_ids(LOAD_CASES))
def test_bad_onnx_for_build_ort_is_one_error_line(make, expect, tiny_export, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    onnx_file = make(inputs, Path(tiny_export.fp32))
    before = snapshot(inputs)
    out = tmp_path / "out" / "opt.onnx"
    result = CliRunner().invoke(main, ["build-ort", "--onnx", str(onnx_file), "-o", str(out)])
    assert_user_error(result, expect, before, [inputs], out.parent)


_EXPORT_SUBSET = ("folder", "empty", "garbage", "truncated", "over_2gb", "opset_99", "no_outputs")


@pytest.mark.parametrize("make, expect", _case_ids([c for c in LOAD_CASES if c[0] in _EXPORT_SUBSET]))
def test_bad_onnx_for_export_is_one_error_line(make, expect, tiny_export, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    onnx_file = make(inputs, Path(tiny_export.fp32))
    plan = inputs / "plan.yaml"
    plan.write_text("version: 1\ntarget: onnxruntime-cpu\ncalibration: {method: minmax, num_images: 2}\n"
                    "default: {precision: int8}\n")
    before = snapshot(inputs)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--onnx", str(onnx_file), "--plan", str(plan), "-o", str(out)])
    assert_user_error(result, expect, before, [inputs], out)


ORT = r"ONNX Runtime cannot load it \("

RUNTIME_CASES = [
    ("custom_domain_op", _save(_relu(opsets=(("", 17), ("my.ops", 1)), op="Foo", domain="my.ops")),
     r"bad\.onnx: " + ORT + r"my\.ops:Foo\(-1\) is not a registered function/op\)"),
    ("op_without_kernel", _save(_image_decoder()), r"bad\.onnx: " + ORT + r"Could not find an implementation for ImageDecoder"),
    ("garbage", _bytes(b"not onnx at all"), r"bad\.onnx: " + ORT),
]


@pytest.mark.parametrize("make, expect", _case_ids(RUNTIME_CASES))
def test_onnx_runtime_load_failure_for_infer_is_one_error_line(make, expect, tiny_export, tiny_model_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    onnx_file = make(inputs, Path(tiny_export.fp32))
    before = snapshot(inputs, tiny_model_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["infer", "--onnx", str(onnx_file), "--model", str(tiny_model_dir),
                                       "--image", str(IMAGE), "-q", "red circle", "-o", str(out)])
    assert_user_error(result, expect, before, [inputs, tiny_model_dir], out)


@pytest.mark.parametrize("make, expect", _case_ids([
    ("custom_domain_op", _with_tiny_metadata(_relu(opsets=(("", 17), ("my.ops", 1)), op="Foo", domain="my.ops")),
     r"custom\.onnx: " + ORT + r"my\.ops:Foo\(-1\) is not a registered function/op\)"),
    ("no_outputs", _save(_relu(outputs=False)), r"bad\.onnx: the graph has no outputs"),
    ("opset_99", _save(_relu(opsets=(("", 99),))), r"bad\.onnx: opset 99 is newer than the installed onnx"),
]))
def test_bad_onnx_for_eval_is_one_error_line(make, expect, tiny_export, tiny_model_dir, tiny_data, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    onnx_file = make(inputs, Path(tiny_export.fp32))
    before = snapshot(inputs, tiny_model_dir, tiny_data)
    result = CliRunner().invoke(main, ["eval", "--onnx", str(onnx_file), "--model", str(tiny_model_dir),
                                       "--data", str(tiny_data), "--eval-images", "2", "--json"])
    assert_user_error(result, expect, before, [inputs, tiny_model_dir, tiny_data], tmp_path / "no-output")


# --------------------------------------------------------------------------- .npy calibration tensors


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("foreign") / "foreign.onnx"
    onnx.save(_foreign_model(), str(path))
    return path


def _plan(folder: Path, where: Path, extra: str = "", num_images: int = 2) -> Path:
    plan = where / "npy.yaml"
    plan.write_text(f"""\
version: 1
target: onnxruntime-cpu
calibration:
  method: minmax
  num_images: {num_images}
  input: {{name: pixels, size: {SIZE}, npy_dir: {json.dumps(str(folder))}{extra}}}
default: {{precision: int8}}
""")
    return plan


def _good() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(3, SIZE, SIZE)).astype(np.float32)


def _npy(array_or_bytes, name: str = "b.npy"):
    """A folder with one good tensor (a.npy) and `name` holding the bad one."""

    def make(folder: Path) -> None:
        np.save(folder / "a.npy", _good())
        if isinstance(array_or_bytes, bytes):
            (folder / name).write_bytes(array_or_bytes)
        elif callable(array_or_bytes):
            array_or_bytes(folder / name)
        else:
            np.save(folder / name, array_or_bytes, allow_pickle=True)

    return make


def _with_value(value) -> np.ndarray:
    array = _good().astype(np.float64)
    array[1, 2, 3] = value
    return array


def _truncated(path: Path) -> None:
    np.save(path, _good())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=_good())


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _nothing(folder: Path) -> None:
    (folder / "readme.txt").write_text("no tensors")


def _folder_named_npy(folder: Path) -> None:
    (folder / "x.npy").mkdir()


NPY_CASES = [
    ("shape_too_small", _npy(np.zeros((3, 8, 8), np.float32)),
     r"b\.npy: shape \(3, 8, 8\), but calibration tensors must be \(channels, height, width\) = \(3, 16, 16\)"),
    ("shape_with_batch", _npy(np.zeros((1, 3, SIZE, SIZE), np.float32)), r"b\.npy: shape \(1, 3, 16, 16\), but"),
    ("shape_hwc", _npy(np.zeros((SIZE, SIZE, 3), np.float32)), r"b\.npy: shape \(16, 16, 3\), but"),
    ("scalar", _npy(np.float32(1.0)), r"b\.npy: shape \(\), but"),
    ("dtype_object", _npy(np.array([{"a": 1}] * 3, dtype=object)),
     r"b\.npy: holds Python objects \(dtype object\), not numbers"),
    ("dtype_bool", _npy(np.zeros((3, SIZE, SIZE), bool)), r"b\.npy: dtype bool is not numeric"),
    ("dtype_complex", _npy(np.zeros((3, SIZE, SIZE), np.complex64)), r"b\.npy: dtype complex64 is not numeric"),
    ("dtype_string", _npy(np.full((3, SIZE, SIZE), "px")), r"b\.npy: dtype <U2 is not numeric"),
    ("dtype_structured", _npy(np.zeros((3, SIZE, SIZE), [("r", "f4"), ("g", "f4")])), r"b\.npy: dtype .* is not numeric"),
    ("nan", _npy(_with_value(np.nan).astype(np.float32)), r"b\.npy: 1 NaN or inf value\(s\) .*must be finite"),
    ("inf", _npy(_with_value(-np.inf).astype(np.float32)), r"b\.npy: 1 NaN or inf value\(s\)"),
    ("beyond_float32", _npy(_with_value(1e300)), r"b\.npy: 1 NaN or inf value\(s\) \(or values beyond float32\)"),
    ("truncated", _npy(_truncated), r"b\.npy: not a readable \.npy tensor"),
    ("text", _npy(b"1 2 3\n4 5 6\n"), r"b\.npy: not a readable \.npy tensor"),
    ("empty", _npy(b""), r"b\.npy: not a readable \.npy tensor"),
    ("npz_archive", _npy(_npz), r"b\.npy: not a single \.npy array \(an \.npz archive\?\)"),
    ("fifo_named_npy_is_skipped", _npy(_fifo), r"npy: 1 calibration images, but the plan asks for 2"),
    ("no_tensors", _nothing, r"npy: no calibration images found"),
    ("only_a_folder_named_npy", _folder_named_npy, r"npy: no calibration images found"),
]


@pytest.mark.parametrize("make, expect", _case_ids(NPY_CASES))
def test_bad_npy_calibration_tensors_are_one_error_line(make, expect, foreign_onnx, tmp_path):
    inputs = tmp_path / "inputs"
    folder = inputs / "npy"
    folder.mkdir(parents=True)
    make(folder)
    plan = _plan(folder, inputs)
    before = snapshot(inputs, foreign_onnx)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--onnx", str(foreign_onnx), "--plan", str(plan), "-o", str(out)])
    assert_user_error(result, expect, before, [inputs, foreign_onnx], out)


def test_missing_npy_folder_and_images_with_zero_std(foreign_onnx, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    before = snapshot(inputs, foreign_onnx)
    out = tmp_path / "out"
    plan = _plan(inputs / "nowhere", inputs)
    result = CliRunner().invoke(main, ["export", "--onnx", str(foreign_onnx), "--plan", str(plan), "-o", str(out)])
    before = snapshot(inputs, foreign_onnx)
    assert_user_error(result, r"nowhere: calibration \.npy folder not found", before, [inputs, foreign_onnx], out)
    # images with a zero std: refused by the plan or by the finite check on the preprocessed batch
    plan = inputs / "std.yaml"
    plan.write_text(f"""\
version: 1
target: onnxruntime-cpu
calibration:
  method: minmax
  images: {json.dumps(str(REPO / "calib_data"))}
  num_images: 2
  input: {{name: pixels, size: {SIZE}, std: [0.25, 0.0, 0.25]}}
default: {{precision: int8}}
""")
    before = snapshot(inputs, foreign_onnx)
    result = CliRunner().invoke(main, ["export", "--onnx", str(foreign_onnx), "--plan", str(plan), "-o", str(out)])
    assert_user_error(result, r"std", before, [inputs, foreign_onnx], out)


def test_good_npy_tensors_still_calibrate(foreign_onnx, tmp_path):
    """The control: the same plan with good tensors (float32 and int) exports."""
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", _good())
    np.save(folder / "b.npy", np.ones((3, SIZE, SIZE), np.uint8))
    plan = _plan(folder, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--onnx", str(foreign_onnx), "--plan", str(plan), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.qdq.onnx").is_file()
    shutil.rmtree(out)


def test_session_errors_are_user_errors_and_reason_is_cleaned(tmp_path):
    from vggt_deploy.backends.onnxruntime.session import make_session
    from vggt_deploy.errors import UserError

    path = tmp_path / "custom.onnx"
    onnx.save(_relu(opsets=(("", 17), ("my.ops", 1)), op="Foo", domain="my.ops"), str(path))
    with pytest.raises(UserError) as info:
        make_session(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ONNX Runtime cannot load it (")
    assert "[ONNXRuntimeError]" not in message and "Load model from" not in message
    with pytest.raises(UserError, match=r"<in-memory model>: ONNX Runtime cannot load it"):
        make_session(b"garbage")
    assert os.path.exists(path)
