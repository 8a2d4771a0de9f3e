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


def runner_fn(path: Path, runtime: str) -> tuple[Callable[[np.ndarray], dict], dict[str, str]]:
    """An `images -> {output: array}` function for one file, and the file's metadata."""
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
        runner = OrtRunner(path, name=path.name).activate()
    return (lambda images: runner.infer({"images": images})), meta


def ground_truth_metrics(out: dict[str, np.ndarray], seq) -> dict[str, float]:
    depth = depth_metrics(out["depth"][0, ..., 0], seq.depth, median_scale=True)
    cams = camera_errors(pose_encoding_to_extrinsics(out["pose_enc"][0]), seq.extrinsics)
    return {**{f"depth_{k}": v for k, v in depth.items()}, **{f"camera_{k}": v for k, v in cams.items()}}


def evaluate_geometry(model: Path, reference: Path, runtime: str = "onnxruntime", sequences: int = 4,
                      frames: int = 2, progress: bool = True) -> dict:
    """Fidelity of `model` against `reference` (FP32) and both against ground truth, on eval sequences."""
    from tqdm import tqdm

    from vggt_deploy.data.multiview import MV_SPLIT_SEEDS, MultiViewConfig, generate_sequence, sequence_tensor

    run, meta = runner_fn(model, runtime)
    run_ref, ref_meta = runner_fn(reference, runtime)
    hw = image_hw(meta, model)
    if image_hw(ref_meta, reference) != hw:
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
