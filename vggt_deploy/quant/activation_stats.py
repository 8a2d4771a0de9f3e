"""Intermediate activations of an ONNX graph on calibration inputs, streamed one image at a time.

Calibration (`auto_calib.py`), smoothing (`smoothing.py`) and the layer-wise comparison
(`compare.py`) all need the values of some inner tensors on real inputs. This module
builds one ONNX Runtime session whose graph also outputs those tensors and yields them per
input, so a caller keeps only the statistics it needs: memory stays bounded by one image's
activations, whatever the number of calibration images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from vggt_deploy.backends.onnxruntime.session import make_session
from vggt_deploy.graph.onnx_io import over_2gb


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (type and shape left to ONNX Runtime)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in present:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return out


def feed_item(images: np.ndarray, i: int) -> np.ndarray:
    """Calibration item `i` as the image input's value.

    [N, C, H, W] arrays hold single images, fed as batches of one; [N, S, C, H, W] arrays hold whole
    multi-frame feeds (a VGGT-1B sequence of S frames), fed as they are.
    """
    return images[i] if images.ndim == 5 else images[i : i + 1]


def iterate_activations(model: onnx.ModelProto, tensors: list[str], images: np.ndarray, image_input: str,
                        extra_feeds: dict[str, np.ndarray] | None = None, desc: str = "activations",
                        threads: int | None = None, weights_dir: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """For each calibration item (`feed_item`), the values of `tensors` (float32 arrays) and the graph outputs.

    Graph optimizations are off so every named tensor survives as it is in the file. `weights_dir`:
    `model` is a graph without its weights (`has_external_data`), which the session reads from their
    file in that folder; the weights are then held once, by the session (VGGT-1B: 4.8 GB, not 15).
    """
    augmented = _with_outputs(model, tensors)
    with tempfile.TemporaryDirectory(prefix="vggt-acts.") as tmp:
        if weights_dir is not None:
            session = make_session(augmented.SerializeToString(), threads=threads, optimize=False,
                                   weights_dir=weights_dir)
        elif over_2gb(augmented):  # protobuf cannot serialize it in one piece
            path = Path(tmp) / "augmented.onnx"
            onnx.save(augmented, str(path), save_as_external_data=True, location="augmented.onnx.data")
            session = make_session(path, threads=threads, optimize=False)
        else:
            session = make_session(augmented.SerializeToString(), threads=threads, optimize=False)
        del augmented
        names = [o.name for o in session.get_outputs()]
        feeds = dict(extra_feeds or {})
        for i in tqdm(range(len(images)), desc=desc, unit="img", leave=False, disable=None):
            feeds[image_input] = feed_item(images, i)
            values = session.run(names, feeds)
            yield {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values)}


def channel_absmax(model: onnx.ModelProto, tensors: list[str], images: np.ndarray, image_input: str,
                   extra_feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each tensor over all images and positions."""
    out: dict[str, np.ndarray] = {}
    for values in iterate_activations(model, tensors, images, image_input, extra_feeds, desc="channel ranges"):
        for name in tensors:
            x = values[name]
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out
