"""VGGT-1B end to end on the tiny config: export (dynamic frames), QuantVGGT-style plan, eval-geometry."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.export.vggt1b_export import parse_image_size
from vggt_deploy.graph.onnx_io import TOKENS_PER_FRAME_KEY, get_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("vggt1b") / "cpu"
    result = CliRunner().invoke(main, ["export-vggt1b", "--config", "vggt_1b_tiny", "--image-size", "56x42",
                                       "--plan", "vggt1b-int8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_export_has_the_contract_and_runs_any_frame_count(exported):
    fp32 = onnx.load(str(exported / "model.onnx"))
    meta = get_metadata(fp32)
    assert meta["vggt.architecture"] == "vggt1b" and json.loads(meta["vggt.image_hw"]) == [42, 56]
    assert meta[TOKENS_PER_FRAME_KEY] == str(5 + 3 * 4)  # camera + 4 registers + a 3x4 patch grid
    assert [i.name for i in fp32.graph.input] == ["images"]
    assert [o.name for o in fp32.graph.output] == ["pose_enc", "depth", "depth_conf", "world_points",
                                                   "world_points_conf"]
    info = json.loads((exported / "export.json").read_text())
    assert max(info["max_rel_diff_vs_torch"].values()) < 1e-3 and info["frames_checked"] == [2, 3]
    assert info["fp32_size_mb"] > info["qdq_size_mb"]
    for path in (exported / "model.onnx", exported / "model.qdq.onnx"):
        session = make_session(path)
        for frames in (1, 4):
            out = session.run(None, {"images": np.random.default_rng(frames).random((frames, 3, 42, 56), np.float32)})
            assert out[0].shape == (1, frames, 9) and out[1].shape == (1, frames, 42, 56, 1)
            assert all(np.isfinite(o).all() for o in out)


def test_the_plan_quantizes_the_transformer_linears_and_keeps_the_ends_16_bit(exported):
    report = json.loads((exported / "report.json").read_text())
    assert report["calibration"]["exclude_tokens"] == {"first": 5, "period": "frame"}
    by_precision = {}
    for layer in report["layers"]:
        by_precision.setdefault(layer["precision"], []).append(layer["layer"])
    blocks = (".frame_blocks.", ".global_blocks.", "patch_embed.blocks.", "camera_head.trunk.")
    assert all(any(b in n for b in blocks) for n in by_precision["int8"])
    assert {b for n in by_precision["int8"] for b in blocks if b in n} == set(blocks)  # every transformer
    assert {n.split("#")[0].rsplit(".", 1)[-1] for n in by_precision["int8"]} == {"qkv", "proj", "fc1", "fc2"}
    ends = ("aggregator.patch_embed.patch_embed.proj", "camera_head.pose_branch.fc2", "point_head.scratch.output_conv1")
    assert set(ends) <= set(by_precision["bf16"])


def test_tensorrt_flavour_passes_the_rules_and_the_10_3_operator_list(tmp_path):
    result = CliRunner().invoke(main, ["export-vggt1b", "--config", "vggt_1b_tiny", "--image-size", "56",
                                       "--plan", "vggt1b-int8-trt", "-o", str(tmp_path / "trt")])
    assert result.exit_code == 0, result.output
    qdq = onnx.load(str(tmp_path / "trt" / "model.qdq.onnx"))
    assert validate_tensorrt(qdq) == []
    assert json.loads((tmp_path / "trt" / "report.json").read_text())["tensorrt_validation"] == "passed"


def test_eval_geometry_reports_fidelity_and_says_weights_are_random(exported):
    result = CliRunner().invoke(main, ["eval-geometry", "--onnx", str(exported / "model.qdq.onnx"),
                                       "--sequences", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["weights"] == "random" and "only the fidelity" in data["note"]
    fid = data["fidelity"]
    assert 0 <= fid["depth_abs_rel"] < 0.05 and fid["depth_delta_1.25"] > 0.95
    assert np.isfinite(fid["camera_rotation_deg"]) and fid["point_error_rel"] < 0.5
    same = CliRunner().invoke(main, ["eval-geometry", "--onnx", str(exported / "model.onnx"),
                                     "--reference", str(exported / "model.onnx")])
    assert same.exit_code == 2 and "is the file being evaluated" in same.output


def test_image_size_errors_name_the_fix():
    assert parse_image_size("518x294") == (294, 518) and parse_image_size("224") == (224, 224)
    with pytest.raises(UserError, match="multiples of the patch size 14"):
        parse_image_size("500")
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        parse_image_size("big")


def test_sensitivity_units_are_per_block(exported):
    from vggt_deploy.graph.layers import find_layers
    from vggt_deploy.quant.plan import Rule
    from vggt_deploy.tuning.units import model_units

    layers = find_layers(onnx.load(str(exported / "model.onnx")))
    units = {u.name: u for u in model_units(layers, "block")}
    assert {"frame.0", "frame.1", "global.0", "global.1", "patch_embed", "heads"} <= set(units)
    for unit in units.values():
        if not unit.attention:  # each pattern selects exactly its unit's layers
            chosen = {l.name for l in layers if Rule(unit.pattern, {}, 0).matches(l.name) and not l.is_attention_matmul}
            assert chosen == set(unit.layers), unit.name
    assert all(n.startswith(("camera_head.", "depth_head.", "point_head.")) for n in units["heads"].layers)


def test_eval_geometry_against_the_pytorch_reference(exported):
    # Random weights are seeded, so the PyTorch port rebuilt here is the model that was exported.
    fp32 = CliRunner().invoke(main, ["eval-geometry", "--onnx", str(exported / "model.onnx"), "--model",
                                     "vggt_1b_tiny", "--sequences", "1", "--json"])
    assert fp32.exit_code == 0, fp32.output
    fid = json.loads(fp32.output.strip().splitlines()[-1])["fidelity"]
    assert fid["depth_abs_rel"] < 1e-4 and fid["point_error_rel"] < 1e-4 and fid["camera_rotation_deg"] < 0.05
    wrong = CliRunner().invoke(main, ["eval-geometry", "--onnx", str(exported / "model.onnx"), "--model", "vggt_1b"])
    assert wrong.exit_code == 2 and "pass the matching --model" in wrong.output


def test_streamed_export_writes_weights_as_external_data(tmp_path):
    # The path VGGT-1B at full size takes (above 2 GB), exercised on the tiny config.
    from vggt_deploy.data.multiview import MultiViewConfig, sequence_tensor, split_sequences
    from vggt_deploy.export.vggt1b_export import export_vggt1b_to_file, is_large
    from vggt_deploy.model.vggt1b.io import create_vggt1b

    model = create_vggt1b("vggt_1b_tiny")
    assert not is_large(model)
    frames = sequence_tensor(split_sequences("eval", 1, MultiViewConfig(42, 56, 3))[0])
    path = tmp_path / "model.onnx"
    info = export_vggt1b_to_file(model, [frames[:2], frames], path)
    assert (tmp_path / "model.onnx.data").stat().st_size > path.stat().st_size  # the weights are outside the graph
    assert max(info["max_rel_diff_vs_torch"].values()) < 1e-3 and not info["simplified"]
    graph = onnx.load(str(path), load_external_data=False)
    assert get_metadata(graph)[TOKENS_PER_FRAME_KEY] == "17"
    out = make_session(path).run(None, {"images": frames[:1]})
    assert out[0].shape == (1, 1, 9)


def test_streamed_export_quantizes_from_the_file(tmp_path):
    # The full-size path (weights streamed to external data, quantized from the file), on the tiny config.
    from vggt_deploy.compile import export_vggt1b_model
    from vggt_deploy.paths import shipped_plan
    from vggt_deploy.quant.plan import load_plan

    out = export_vggt1b_model("vggt_1b_tiny", tmp_path / "big", (42, 56), load_plan(shipped_plan("vggt1b-int8")),
                              cache_dir=tmp_path / "cache", stream=True)
    assert (tmp_path / "big" / "model.onnx.data").is_file() and out.qdq.is_file()
    assert out.export_info["qdq_size_mb"] < out.export_info["fp32_size_mb"]
    report = json.loads((tmp_path / "big" / "report.json").read_text())
    assert report["counts"]["static"] > 0 and report["calibration"]["exclude_tokens"]["period"] == "frame"
    images = np.random.default_rng(0).random((2, 3, 42, 56), np.float32)
    want = make_session(out.fp32).run(None, {"images": images})
    got = make_session(out.qdq).run(None, {"images": images})
    assert np.abs(got[1] - want[1]).max() / np.abs(want[1]).max() < 0.05  # depth stays close to FP32


def test_quantizing_beyond_the_memory_at_hand_is_refused_before_any_work(tmp_path, monkeypatch):
    import vggt_deploy.compile as compile_mod
    from vggt_deploy.paths import shipped_plan
    from vggt_deploy.quant.plan import load_plan

    monkeypatch.setattr(compile_mod, "QUANTIZE_MEMORY_FACTOR", 10**9)  # as if the tiny model needed petabytes
    with pytest.raises(UserError, match="quantizing needs about .* of memory"):
        compile_mod.export_vggt1b_model("vggt_1b_tiny", tmp_path / "out", (42, 56),
                                        load_plan(shipped_plan("vggt1b-int8")), stream=True)
    assert not (tmp_path / "out").exists()
