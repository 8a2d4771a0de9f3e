"""VGGT-1B (PyTorch port, `vggt_deploy.model.vggt1b`) -> FP32 ONNX with a dynamic frame count.

The contract: one input ``images`` [S, 3, H, W] float32 RGB in [0, 1] (the model
normalises inside), S dynamic, H and W multiples of 14 fixed at export; five
named outputs ``pose_enc`` [1, S, 9], ``depth`` [1, S, H, W, 1], ``depth_conf``
[1, S, H, W], ``world_points`` [1, S, H, W, 3], ``world_points_conf`` [1, S, H, W].
RoPE, the DINO position-embedding resize and the DPT position tables are
constants of the fixed H, W, so the graph has no If, Loop or sequence op, and no
autocast. Every node keeps its module path (``aggregator.frame_blocks.3.attn.qkv``)
for the plan. Metadata: the config (JSON), the tokens per frame (camera +
registers + patches, for ``calibration.exclude_tokens: {period: frame}``), the
preprocessing and the weights' hash. ONNX Runtime is checked against PyTorch on
two frame counts before the file is kept; files above 2 GB use external data.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from vggt_deploy.errors import UserError
from vggt_deploy.export.onnx_export import OPSET, simplify_keeping_scopes
from vggt_deploy.graph.external_data import fold_weight_transposes
from vggt_deploy.graph.onnx_io import TOKENS_PER_FRAME_KEY, TWO_GB, over_2gb, set_metadata
from vggt_deploy.model.vggt1b.layers import Attention
from vggt_deploy.model.vggt1b.model import OUTPUT_NAMES, VGGT1B

INPUT_NAME = "images"
MAX_FRAMES = 1024
TOLERANCE = 1e-3  # max |ORT - PyTorch| relative to each output's largest magnitude


def parse_image_size(text: str, patch: int = 14) -> tuple[int, int]:
    """``518`` or ``518x294`` (width x height) -> (height, width), both multiples of `patch`."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) <= 0:
        raise UserError(f"--image-size {text!r}: expected WIDTH or WIDTHxHEIGHT, e.g. 518 or 518x294")
    width, height = parts[0], parts[-1]
    if width % patch or height % patch:
        raise UserError(f"--image-size {text!r}: width and height must be multiples of the patch size {patch} "
                        f"(e.g. {width // patch * patch or patch}x{height // patch * patch or patch})")
    return height, width


def tokens_per_frame(model: VGGT1B, height: int, width: int) -> int:
    cfg = model.cfg
    return cfg.patch_start_idx + (height // cfg.patch_size) * (width // cfg.patch_size)


def metadata(model: VGGT1B, height: int, width: int, weights_sha256: str = "") -> dict[str, str]:
    cfg = model.cfg
    return {
        "vggt.model": cfg.name,
        "vggt.architecture": "vggt1b",
        "vggt.config": json.dumps(dataclasses.asdict(cfg)),
        "vggt.weights_sha256": weights_sha256,
        "vggt.image_hw": json.dumps([height, width]),
        TOKENS_PER_FRAME_KEY: str(tokens_per_frame(model, height, width)),
        "vggt.preprocess": json.dumps({"size": height if height == width else None, "height": height, "width": width,
                                       "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "rgb",
                                       "layout": "SCHW", "range": "[0, 1]"}),
        "vggt.inputs": json.dumps([INPUT_NAME]),
        "vggt.outputs": json.dumps(list(OUTPUT_NAMES)),
    }


def trace_vggt1b(model: VGGT1B, images: torch.Tensor) -> onnx.ModelProto:
    """The dynamo export with a dynamic frame axis, plain attention maths (every MatMul visible)."""
    return _export_program(model, images).model_proto


def _export_program(model: VGGT1B, images: torch.Tensor):
    """The `torch.onnx.ONNXProgram` (weights still the PyTorch tensors)."""
    frames = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    previous, Attention.fused_attn = Attention.fused_attn, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (images,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=({0: frames},))
    finally:
        Attention.fused_attn = previous
    return program


def compare_with_torch(model: VGGT1B, onnx_model: onnx.ModelProto, inputs: list[np.ndarray]) -> dict[str, float]:
    """Largest |ORT - PyTorch| per output over `inputs` (frame stacks), relative to the output's magnitude."""
    from vggt_deploy.backends.onnxruntime.session import make_session

    with tempfile.TemporaryDirectory(prefix="vggt1b-check.") as tmp:
        if over_2gb(onnx_model):  # protobuf cannot serialise it whole: through external data
            path = Path(tmp) / "model.onnx"
            onnx.save(onnx_model, str(path), save_as_external_data=True, location="model.onnx.data")
            session = make_session(path)
        else:
            session = make_session(onnx_model.SerializeToString())
        return _worst_diffs(model, session, inputs)


def _worst_diffs(model: VGGT1B, session, inputs: list[np.ndarray]) -> dict[str, float]:
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for images in inputs:
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        with torch.no_grad():
            want = model(torch.from_numpy(images))
        for name, g, w in zip(OUTPUT_NAMES, got, want):
            w = w.numpy()
            if g.shape != w.shape:
                raise RuntimeError(f"exported {name} has shape {g.shape}, PyTorch {w.shape}")
            worst[name] = max(worst[name], float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-6)))
    return worst


def is_large(model: VGGT1B) -> bool:
    """Weights of 2 GB or more: one protobuf cannot hold them, so the export streams them to external data."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) >= TWO_GB


def export_vggt1b_to_file(model: VGGT1B, check_inputs: list[np.ndarray], path: Path, weights_sha256: str = "") -> dict:
    """The export of a model above 2 GB, written to `path` with its weights in ``path.name + '.data'``.

    The weights go from the PyTorch tensors to the data file one by one (`ONNXProgram.save` with external
    data), never as one protobuf: the full VGGT-1B exports in about the memory of the model itself. The
    graph is not simplified (onnxslim would load every weight); module paths are the exporter's own, and
    weights read through a Transpose are folded file to file (`fold_weight_transposes`).
    Checked like `export_vggt1b`, from the file.
    """
    from vggt_deploy.backends.onnxruntime.session import make_session

    model = model.eval()
    height, width = check_inputs[0].shape[-2:]
    program = _export_program(model, torch.from_numpy(check_inputs[0]))
    program.save(str(path), external_data=True)
    del program
    folded = fold_weight_transposes(path)  # the camera trunk's shared weights: initializers the quantizer sees
    graph = onnx.load(str(path), load_external_data=False)  # the graph only; weights stay in the data file
    set_metadata(graph, metadata(model, height, width, weights_sha256))
    onnx.save(graph, str(path))  # external references are kept as they are
    ops = {n.op_type for n in graph.graph.node}
    del graph
    _refuse_control_flow(ops)
    diffs = _worst_diffs(model, make_session(path), check_inputs)
    _check_diffs(diffs)
    return {"max_rel_diff_vs_torch": diffs, "frames_checked": [len(x) for x in check_inputs],
            "tokens_per_frame": tokens_per_frame(model, height, width), "ops": sorted(ops), "simplified": False,
            "weight_transposes_folded": folded}


def export_vggt1b_file_in_child(config: str, weights: Path | None, weights_sha256: str,
                                check_inputs: list[np.ndarray], path: Path) -> dict:
    """`export_vggt1b_to_file` of the model `config` (with `weights`, else its seeded random weights), run
    in a fresh process: PyTorch and the exporter keep much of what they allocated until the process
    ends (at full size the export left 10 GB in use), and the caller goes on to calibrate in it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_export_config_to_file, config, weights, weights_sha256, check_inputs, path).result()
        except BrokenProcessPool:
            raise UserError(f"{config}: the export process died before it finished (killed for lack of memory? "
                            "it needs about 2.5x the weights)") from None


def _export_config_to_file(config: str, weights: Path | None, weights_sha256: str, check_inputs: list[np.ndarray],
                           path: Path) -> dict:
    from vggt_deploy.model.vggt1b.io import create_vggt1b, load_vggt1b_weights

    model = create_vggt1b(config)
    if weights is not None:
        load_vggt1b_weights(model, weights)
    return export_vggt1b_to_file(model, check_inputs, path, weights_sha256)


def _refuse_control_flow(ops: set[str]) -> None:
    forbidden = ops & {"If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "ConcatFromSequence",
                       "SplitToSequence"}
    if forbidden:
        raise RuntimeError(f"the VGGT-1B graph holds {sorted(forbidden)}, which TensorRT's parser rejects")


def _check_diffs(diffs: dict[str, float]) -> None:
    bad = {k: v for k, v in diffs.items() if v > TOLERANCE}
    if bad:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch: {bad} (relative, tolerance {TOLERANCE})")


def export_vggt1b(model: VGGT1B, check_inputs: list[np.ndarray], weights_sha256: str = "") -> tuple[onnx.ModelProto, dict]:
    """Trace, simplify (module paths kept), annotate and check; the FP32 model and the check's numbers.

    `check_inputs` are frame stacks [S, 3, H, W] of one image size with at least two frame counts, so
    the dynamic axis is exercised; the first one is traced.
    """
    model = model.eval()
    height, width = check_inputs[0].shape[-2:]
    traced = trace_vggt1b(model, torch.from_numpy(check_inputs[0]))
    slim = simplify_keeping_scopes(traced)
    del traced
    set_metadata(slim, metadata(model, height, width, weights_sha256))
    ops = {n.op_type for n in slim.graph.node}
    _refuse_control_flow(ops)
    diffs = compare_with_torch(model, slim, check_inputs)
    _check_diffs(diffs)
    return slim, {"max_rel_diff_vs_torch": diffs, "frames_checked": [len(x) for x in check_inputs],
                  "tokens_per_frame": tokens_per_frame(model, height, width), "ops": sorted(ops)}
