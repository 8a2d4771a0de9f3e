"""Broken model folders through the real CLI: one `error:` line naming the file, exit 2, nothing touched.

Each case copies the session's tiny model folder, breaks one thing (a config.json field, the
vocabulary, the weights) and runs `vggt-deploy infer` on it in-process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_checks import assert_user_error, snapshot
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from vggt_deploy.cli import main
from vggt_deploy.fileio import sha256_file

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "calib_data" / "calib_0000.jpg"
DELETE = object()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def _meta_edit(**changes):
    """Edit top-level fields of config.json (DELETE removes one)."""

    def apply(model: Path) -> None:
        path = model / "config.json"
        meta = json.loads(path.read_text())
        for key, value in changes.items():
            if value is DELETE:
                meta.pop(key, None)
            else:
                meta[key] = value
        path.write_text(json.dumps(meta, indent=2))

    return apply


def _cfg(**changes):
    """Edit fields of config.json's "config" object (DELETE removes one; NaN/inf are written as JSON allows)."""

    def apply(model: Path) -> None:
        path = model / "config.json"
        meta = json.loads(path.read_text())
        for key, value in changes.items():
            if value is DELETE:
                meta["config"].pop(key, None)
            else:
                meta["config"][key] = value
        path.write_text(json.dumps(meta, indent=2))

    return apply


def _raw(name: str, data: bytes | str):
    def apply(model: Path) -> None:
        (model / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return apply


def _replace_text(name: str, old: str, new: str):
    def apply(model: Path) -> None:
        path = model / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    return apply


def _vocab(edit):
    def apply(model: Path) -> None:
        path = model / "vocab.json"
        words = json.loads(path.read_text())["vocab"]
        path.write_text(json.dumps(edit(words)))

    return apply


def _remove(name: str):
    def apply(model: Path) -> None:
        (model / name).unlink()

    return apply


def _folder_instead(name: str):
    def apply(model: Path) -> None:
        (model / name).unlink()
        (model / name).mkdir()
        (model / name / "inside.txt").write_text("x")

    return apply


def _fifo_instead(name: str):
    def apply(model: Path) -> None:
        (model / name).unlink()
        os.mkfifo(model / name)

    return apply


def _unreadable(name: str):
    def apply(model: Path) -> None:
        (model / name).chmod(0)

    return apply


def _reseal(model: Path) -> None:
    """Make config.json's weights_sha256 match the (edited) weights file, as a careless user might."""
    path = model / "config.json"
    meta = json.loads(path.read_text())
    meta["weights_sha256"] = sha256_file(model / "model.safetensors")
    path.write_text(json.dumps(meta, indent=2))


def _weights_bytes(edit):
    """Rewrite model.safetensors' bytes and reseal the sha256 in config.json."""

    def apply(model: Path) -> None:
        path = model / "model.safetensors"
        path.write_bytes(edit(path.read_bytes()))
        _reseal(model)

    return apply


def _tensors(edit):
    """Rewrite the tensors of model.safetensors (keeping its metadata) and reseal the sha256."""

    def apply(model: Path) -> None:
        from safetensors import safe_open

        path = model / "model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        _reseal(model)

    return apply


def _first_float_key(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in tensors.items() if v.ndim == 2)


def _drop_tensor(t: dict) -> None:
    t.pop(_first_float_key(t))


def _add_tensor(t: dict) -> None:
    t["extra.weight"] = torch.zeros(2, 2)


def _reshape_tensor(t: dict) -> None:
    k = _first_float_key(t)
    t[k] = torch.zeros(t[k].shape[0] + 1, t[k].shape[1])


def _int_tensor(t: dict) -> None:
    k = _first_float_key(t)
    t[k] = t[k].to(torch.int32)


def _model_path_is_file(model: Path) -> None:
    shutil.rmtree(model)
    model.write_text("not a folder")


def _model_path_missing(model: Path) -> None:
    shutil.rmtree(model)


NAN, INF = math.nan, math.inf
CFG = r"config\.json: config "

CASES = [
    # config.json: field types and ranges
    ("num_heads_zero", _cfg(num_heads=0), CFG + r"field 'num_heads' must be an integer in 1\.\.1024, got 0"),
    ("num_heads_not_a_divisor", _cfg(num_heads=3), CFG + r"embed_dim \(32\) must be divisible by num_heads \(3\)"),
    ("num_heads_bool", _cfg(num_heads=True), r"field 'num_heads' must be an integer .*, got true"),
    ("embed_dim_string", _cfg(embed_dim="32"), r"field 'embed_dim' must be an integer .*, got a string '32'"),
    ("embed_dim_float", _cfg(embed_dim=32.0), r"field 'embed_dim' must be an integer .*, got 32\.0"),
    ("embed_dim_not_multiple_of_8", _cfg(embed_dim=36), r"embed_dim \(36\) must be a multiple of 8"),
    ("depth_negative", _cfg(depth=-1), r"field 'depth' must be an integer in 1\.\.256, got -1"),
    ("depth_null", _cfg(depth=None), r"field 'depth' must be an integer .*, got null"),
    ("num_classes_huge", _cfg(num_classes=10**12), r"field 'num_classes' must be an integer in 1\.\.1000000"),
    ("vocab_size_list", _cfg(vocab_size=[30]), r"field 'vocab_size' must be an integer .*, got \[30\]"),
    ("image_size_not_multiple", _cfg(image_size=33), r"image_size \(33\) must be a multiple of patch_stride \(8\)"),
    ("patch_stride_not_power_of_2", _cfg(patch_stride=6), r"patch_stride \(6\) must be a power of 2"),
    ("patch_stride_one", _cfg(patch_stride=1), r"field 'patch_stride' must be an integer in 2\.\.1024, got 1"),
    ("grounding_tokens_not_square", _cfg(num_grounding_tokens=5), r"num_grounding_tokens \(5\) must be a perfect square"),
    ("grounding_layers_decreasing", _cfg(grounding_layers=[2, 1]), r"grounding_layers \[2, 1\] must be increasing"),
    ("grounding_layers_empty", _cfg(grounding_layers=[]), r"at least one grounding layer is needed"),
    ("grounding_layers_beyond_depth", _cfg(grounding_layers=[1, 9]), r"must lie in 1\.\.depth \(2\)"),
    ("grounding_layers_string", _cfg(grounding_layers="1,2"), r"field 'grounding_layers' must be a list of integers"),
    ("grounding_layers_bool", _cfg(grounding_layers=[True, 2]), r"field 'grounding_layers' must be a list of integers"),
    ("mean_two_values", _cfg(mean=[0.5, 0.5]), r"field 'mean' must be a list of 3 finite numbers .*, got \[0\.5, 0\.5\]"),
    ("mean_nan", _cfg(mean=[NAN, 0.5, 0.5]), r"field 'mean' must be a list of 3 finite numbers .*, got \[NaN, 0\.5, 0\.5\]"),
    ("mean_strings", _cfg(mean=["0.5", "0.5", "0.5"]), r"field 'mean' must be a list of 3 finite numbers"),
    ("std_zero", _cfg(std=[0.25, 0, 0.25]), r"field 'std' must be positive \(inputs are divided by it\)"),
    ("std_negative", _cfg(std=[-0.25, 0.25, 0.25]), r"field 'std' must be positive"),
    ("std_infinite", _cfg(std=[INF, 0.25, 0.25]), r"field 'std' must be a list of 3 finite numbers"),
    ("mlp_ratio_zero", _cfg(mlp_ratio=0), r"field 'mlp_ratio' must be a finite number in \(0, 64\], got 0"),
    ("mlp_ratio_overflow", _replace_text("config.json", '"mlp_ratio": 4.0', '"mlp_ratio": 1e999'),
     r"field 'mlp_ratio' must be a finite number .*, got inf"),
    ("qk_norm_string", _cfg(qk_norm="yes"), r"field 'qk_norm' must be true or false, got a string 'yes'"),
    ("name_number", _cfg(name=42), r"field 'name' must be a non-empty string, got 42"),
    ("name_missing", _cfg(name=DELETE), r"config\.json: missing required field 'name'"),
    ("field_typo", _cfg(num_heads=DELETE, num_head=2),
     r"unknown config field\(s\) \['num_head'\] \('num_head' -> did you mean 'num_heads'\?\)"),
    ("field_unknown", _cfg(colour=1), r"unknown config field\(s\) \['colour'\]; known fields: name, image_size"),
    ("config_not_an_object", _meta_edit(config=[1, 2]), r"'config' must be a JSON object .*, got \[1, 2\]"),
    # config.json vs the other files
    ("vocab_size_mismatch", _cfg(vocab_size=99), r"vocab\.json: \d+ words, but the config says vocab_size=99"),
    ("embed_dim_resized", _cfg(embed_dim=48),
     (r"model\.safetensors: \d+ tensor\(s\) do not fit config vggt_tiny \(\S+: \[(\d+, )*32(, \d+)*\] in the "
      r"file, \[(\d+, )*48(, \d+)*\] from the config")),
    ("embed_dim_typo_huge", _cfg(embed_dim=16000), r"model\.safetensors: \d+ tensor\(s\) do not fit config"),
    ("grounding_prior_too_large", _cfg(image_size=4096, patch_stride=2, num_grounding_tokens=16),
     r"num_grounding_tokens x \(image_size / patch_stride\)\^2 exceeds 16777216"),
    ("query_dim_resized", _cfg(query_dim=64), r"model\.safetensors: \d+ tensor\(s\) do not fit .*query_encoder\."),
    ("num_classes_resized", _cfg(num_classes=7), r"heads\.(cls|dense)\.\S+: \[\d+(, \d+)*\] in the file"),
    # config.json itself
    ("config_top_level_list", _raw("config.json", "[1, 2]"), r"config\.json: expected fields 'config' and 'weights_sha256'"),
    ("sha256_missing", _meta_edit(weights_sha256=DELETE), r"config\.json: expected fields 'config' and 'weights_sha256'"),
    ("sha256_short", _meta_edit(weights_sha256="abc123"),
     r"config\.json: 'weights_sha256' must be the 64-hex-digit sha256 of model\.safetensors, got \"abc123\""),
    ("sha256_number", _meta_edit(weights_sha256=12345), r"'weights_sha256' must be the 64-hex-digit sha256 .*got 12345"),
    ("sha256_not_hex", _meta_edit(weights_sha256="z" * 64), r"'weights_sha256' must be the 64-hex-digit sha256"),
    ("sha256_wrong", _meta_edit(weights_sha256="0" * 64), r"model\.safetensors: sha256 mismatch"),
    ("config_not_json", _raw("config.json", "{not json"), r"config\.json: not valid JSON"),
    ("config_empty", _raw("config.json", b""), r"config\.json: not valid JSON"),
    ("config_binary", _raw("config.json", b"\xff\xfe\x00\x81garbage"), r"config\.json: not valid JSON"),
    ("config_deeply_nested", _raw("config.json", "[" * 200_000), r"config\.json: not valid JSON"),
    ("config_folder", _folder_instead("config.json"), r"config\.json: is a folder"),
    ("config_missing", _remove("config.json"), r"config\.json: file not found"),
    ("config_fifo", _fifo_instead("config.json"), r"config\.json: not a regular file \(a pipe, socket or device\)"),
    pytest.param(_unreadable("config.json"), r"config\.json: cannot read it \(Permission denied\)",
                 marks=pytest.mark.skipif(AS_ROOT, reason="root reads any file"), id="config_unreadable"),
    # vocab.json
    ("vocab_not_json", _raw("vocab.json", "{"), r"vocab\.json: not a vocabulary file \(invalid JSON"),
    ("vocab_wrong_key", _raw("vocab.json", '{"words": ["[PAD]", "[UNK]"]}'), r"vocab\.json: not a vocabulary file"),
    ("vocab_not_a_list", _raw("vocab.json", '{"vocab": "abc"}'), r"vocab\.json: not a vocabulary file"),
    ("vocab_number_entry", _vocab(lambda w: [*w[:2], 3, *w[3:]]), r"vocab\.json: vocab\[2\] must be a non-empty string"),
    ("vocab_reordered", _vocab(lambda w: w[:2] + w[2:][::-1]), r"vocab\.json: words must be unique and sorted"),
    ("vocab_duplicate", _vocab(lambda w: [*w[:-1], w[2]]), r"vocab\.json: words must be unique and sorted"),
    ("vocab_no_pad", _vocab(lambda w: w[1:] + ["zzz"]), r"vocab\.json: vocabulary must start with \[PAD\], \[UNK\]"),
    ("vocab_missing", _remove("vocab.json"), r"vocab\.json: vocabulary file not found"),
    ("vocab_folder", _folder_instead("vocab.json"), r"vocab\.json: is a folder"),
    ("vocab_fifo", _fifo_instead("vocab.json"), r"vocab\.json: not a regular file"),
    # model.safetensors
    ("weights_missing", _remove("model.safetensors"), r"model\.safetensors: weights file not found"),
    ("weights_folder", _folder_instead("model.safetensors"), r"model\.safetensors: is a folder"),
    ("weights_truncated", _weights_bytes(lambda b: b[: len(b) // 2]), r"model\.safetensors: not a readable safetensors file"),
    ("weights_garbage", _weights_bytes(lambda b: b"garbage!" * 16), r"model\.safetensors: not a readable safetensors file"),
    ("weights_empty", _weights_bytes(lambda b: b""), r"model\.safetensors: not a readable safetensors file"),
    ("weights_tensor_missing", _tensors(_drop_tensor), r"model\.safetensors: weights do not fit config vggt_tiny \(missing \['"),
    ("weights_tensor_extra", _tensors(_add_tensor), r"unexpected \['extra\.weight'\]"),
    ("weights_tensor_reshaped", _tensors(_reshape_tensor),
     r"model\.safetensors: 1 tensor\(s\) do not fit config vggt_tiny \(\S+: \[\d+, \d+\] in the file, \[\d+, \d+\] from"),
    ("weights_tensor_int", _tensors(_int_tensor), r"1 tensor\(s\) do not fit .*torch\.int32 in the file, torch\.float32"),
    # the folder
    ("model_path_is_a_file", _model_path_is_file, r"model folder not found"),
    ("model_path_missing", _model_path_missing, r"model folder not found"),
]


CASES = [pytest.param(*c[1:], id=c[0]) if type(c) is tuple else c for c in CASES]


@pytest.mark.parametrize("corrupt, expect", CASES)
def test_broken_model_folder_is_one_error_line(corrupt, expect, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    corrupt(model)
    before = snapshot(model, IMAGE)
    out = tmp_path / "out"
    try:
        result = CliRunner().invoke(main, ["infer", "--model", str(model), "--image", str(IMAGE), "-q", "red circle",
                                           "-o", str(out)])
        assert_user_error(result, expect, before, [model, IMAGE], out)
    finally:
        for p in model.rglob("*") if model.is_dir() else []:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_plan_show_and_eval_report_the_same_config_error(tiny_model_dir, tiny_data, tmp_path):
    """The commands that only read a model folder fail the same way (no output path to check)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _cfg(num_heads=0)(model)
    before = snapshot(model)
    for args in (["plan", "show", "--model", str(model), "--plan", "int8"],
                 ["eval", "--model", str(model), "--data", str(tiny_data), "--eval-images", "2"]):
        result = CliRunner().invoke(main, args)
        assert_user_error(result, r"config field 'num_heads' must be an integer in 1\.\.1024, got 0", before, [model],
                           tmp_path / "none")


def test_valid_model_still_loads(tiny_model_dir):
    """The checks accept what save_model writes (and registered configs)."""
    from vggt_deploy.model.config import VGGTConfig, get_config, list_models
    from vggt_deploy.model.io import load_model

    assert load_model(tiny_model_dir).model.cfg.name == "vggt_tiny"
    for name in list_models():
        cfg = get_config(name)
        assert VGGTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
