"""`eval-geometry`: a VGGT-1B ONNX file against its FP32 reference (fidelity) and the ground truth.

Both files run on the same multi-view evaluation sequences (`data.multiview`,
the image size and frame count of the export). Fidelity compares every output
with the reference's (`bench.geometry.fidelity`); the ground-truth comparison
scales depth by the median ratio and compares cameras as encoded. Metrics are
means over sequences. With random weights (no ``vggt.weights_sha256`` in the
file) only fidelity means anything, and the result says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vggt_deploy.bench.geometry import camera_errors, depth_metrics, fidelity, pose_encoding_to_extrinsics
from vggt_deploy.errors import UserError

OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
RANDOM_NOTE = ("random weights: only the fidelity against FP32 is meaningful; the ground-truth metrics of an "
              "untrained model are noise")


def image_hw(meta: dict[str, str], path: Path) -> tuple[int, int]:
    """(H, W) recorded by the VGGT-1B exporter."""
    if meta.get("vggt.architecture") != "vggt1b" or "vggt.image_hw" not in meta:
        raise UserError(f"{path}: not a VGGT-1B export (no vggt.architecture=vggt1b metadata); "
                        "export it with `vggt-deploy export-vggt1b`")
    height, width = json.loads(meta["vggt.image_hw"])
    return int(height), int(width)


def runner_fn(path: Path, runtime: str, activate: bool = True) -> tuple[Callable[[np.ndarray], dict] | None, dict]:
    """An `images -> {output: array}` function for one file (None unless `activate`), and the file's metadata."""
    if runtime == "openvino":
        from vggt_deploy.backends.openvino.runner import OvRunner

        runner = OvRunner(path, name=path.name).activate()
        meta = dict(runner.metadata)
    else:
        import onnx

        from vggt_deploy.backends.onnxruntime.runner import OrtRunner

        if not path.is_file():
            raise UserError(f"{path}: ONNX file not found")
        try:  # the metadata only: external weights (above 2 GB) stay on disk
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - onnx raises many types
            raise UserError(f"{path}: not a valid ONNX model ({exc})") from None
        if not activate:
            return None, meta
        runner = OrtRunner(path, name=path.name).activate()
    return (lambda images: runner.infer({"images": images})), meta


def torch_fn(config: str, weights: Path | None, model_path: Path) -> tuple[Callable[[np.ndarray], dict], dict[str, str]]:
    """The PyTorch port as a reference runner (FP32), with metadata like an export's."""
    import torch

    from vggt_deploy.model.vggt1b.io import create_vggt1b, load_vggt1b_weights
    from vggt_deploy.model.vggt1b.model import OUTPUT_NAMES

    model = create_vggt1b(config)
    if weights is not None:
        load_vggt1b_weights(model, weights)

    @torch.no_grad()
    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return {n: t.numpy() for n, t in zip(OUTPUT_NAMES, model(torch.from_numpy(images)))}

    _, meta = runner_fn(model_path, "onnxruntime", activate=False)
    return run, meta


def ground_truth_metrics(out: dict[str, np.ndarray], seq) -> dict[str, float]:
    depth = depth_metrics(out["depth"][0, ..., 0], seq.depth, median_scale=True)
    cams = camera_errors(pose_encoding_to_extrinsics(out["pose_enc"][0]), seq.extrinsics)
    return {**{f"depth_{k}": v for k, v in depth.items()}, **{f"camera_{k}": v for k, v in cams.items()}}


def evaluate_geometry(model: Path, reference: Path | None, runtime: str = "onnxruntime", sequences: int = 4,
                      frames: int = 2, progress: bool = True, torch_reference: tuple[str, Path | None] | None = None
                      ) -> dict:
    """Fidelity of `model` against `reference` (FP32) and both against ground truth, on eval sequences.

    With `torch_reference` (config name, weights or None) the reference is the PyTorch port in FP32
    instead of an FP32 export.
    """
    from tqdm import tqdm

    from vggt_deploy.data.multiview import MV_SPLIT_SEEDS, MultiViewConfig, generate_sequence, sequence_tensor

    run, meta = runner_fn(model, runtime)
    if torch_reference is not None:
        run_ref, ref_meta = torch_fn(*torch_reference, model)
        reference = f"PyTorch {torch_reference[0]} ({torch_reference[1] or 'random weights'})"
        if meta.get("vggt.model") != torch_reference[0]:
            raise UserError(f"{model} was exported from {meta.get('vggt.model')}, not {torch_reference[0]}; "
                            "pass the matching --model")
    else:
        run_ref, ref_meta = runner_fn(reference, runtime)
    hw = image_hw(meta, model)
    if torch_reference is None and image_hw(ref_meta, reference) != hw:
        raise UserError(f"{model} takes {hw[1]}x{hw[0]} images but {reference} takes "
                        f"{image_hw(ref_meta, reference)[1]}x{image_hw(ref_meta, reference)[0]}; export both alike")
    fid, gt_model, gt_ref = [], [], []
    cfg = MultiViewConfig(height=hw[0], width=hw[1], frames=frames)
    for i in tqdm(range(sequences), desc="eval-geometry", unit="seq", disable=not progress):
        seq = generate_sequence(MV_SPLIT_SEEDS["eval"], i, cfg)
        images = sequence_tensor(seq)
        out = run(images)
        ref = run_ref(images)
        fid.append(fidelity(out, ref))
        gt_model.append(ground_truth_metrics(out, seq))
        gt_ref.append(ground_truth_metrics(ref, seq))

    def mean(rows: list[dict]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    random = not meta.get("vggt.weights_sha256")
    return {"model": str(model), "reference": str(reference), "runtime": runtime, "sequences": sequences,
            "frames": frames, "image_hw": list(hw), "weights": "random" if random else meta["vggt.weights_sha256"],
            "fidelity": mean(fid), "ground_truth": {"model": mean(gt_model), "reference": mean(gt_ref)},
            "note": RANDOM_NOTE if random else "trained weights: fidelity and ground truth both apply"}
