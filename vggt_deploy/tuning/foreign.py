"""A workbench for a model exported elsewhere: an ONNX file, a base plan, held-out images.

`vggt-deploy export --onnx FILE --plan PLAN` quantizes such models; the plan's
``calibration.input`` gives the image input's name and preprocessing, and the
model has that one input (see `vggt_deploy.compile.foreign_image_input`). The
tool cannot know the model's task metric, so variants are scored by how far
their outputs move from FP32 on a folder of held-out images: the relative L2
error of each output over all images (`quant.compare.output_agreement`),
averaged over the outputs, in percent. The rest of the agreement (cosine,
Pearson r per image and its worst image) is kept per variant (`agreement`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vggt_deploy.errors import UserError
from vggt_deploy.quant.plan import QdqPlan
from vggt_deploy.tuning.variants import BaseWorkbench


class ForeignWorkbench(BaseWorkbench):
    """FP32 graph + calibration + held-out images of a foreign ONNX model, and a cache of built variants.

    Args:
        onnx_file: the FP32 ONNX model (one image input).
        base: the plan whose per-layer choices a quantized unit takes; its ``calibration`` section
            (``input`` included) says how calibration and held-out images are preprocessed.
        work_dir: where the FP32 copy (fp32.onnx) and the variant QDQ files go.
        images_dir: a folder of held-out images (not the calibration images) to score variants on.
        unit_kind: ``block`` or ``layer`` (see `vggt_deploy.tuning.units`).
        units: restrict the analysis to these unit names (empty: all quantizable units).
        eval_images: at most this many images of `images_dir` make the full held-out set.
        cache_dir: calibration range cache (default: the user cache, shared with `export --onnx`).
        runtime: where latency savings are timed (``openvino`` or ``onnxruntime``).
    """

    def __init__(self, onnx_file: Path, base: QdqPlan, work_dir: Path, images_dir: Path, unit_kind: str = "block",
                 units: Iterable[str] = (), eval_images: int = 1000, cache_dir: Path | None = None,
                 runtime: str = "openvino") -> None:
        from vggt_deploy.compile import foreign_image_input
        from vggt_deploy.graph.onnx_io import load_onnx, save_onnx
        from vggt_deploy.quant.compare_inputs import load_images

        self.onnx_file = Path(onnx_file)
        model = load_onnx(self.onnx_file)
        self.image_input, self.preprocess = foreign_image_input(model, base, self.onnx_file)
        self.extra_feeds = {}
        # Read before anything is written: a bad folder fails first. Subsets are its first images.
        self.images = load_images(images_dir, eval_images, self.preprocess, base.calibration.input.channel_order)
        # A copy in work_dir, so the variant without quantized units is a file like the others.
        fp32_path = save_onnx(model, Path(work_dir) / "fp32.onnx")
        self._setup(fp32_path, model, base, work_dir, unit_kind, units, cache_dir, runtime)

    @classmethod
    def from_parts(cls, fp32_path: Path, images_path: Path, base: QdqPlan, work_dir: Path, unit_kind: str,
                   units: Iterable[str], cache_dir: Path, runtime: str) -> ForeignWorkbench:
        """A workbench on another node: the FP32 copy and the preprocessed held-out images (.npy) as shared."""
        from vggt_deploy.compile import foreign_image_input
        from vggt_deploy.graph.onnx_io import load_onnx

        bench = cls.__new__(cls)
        bench.onnx_file = Path(fp32_path)
        model = load_onnx(bench.onnx_file)
        bench.image_input, bench.preprocess = foreign_image_input(model, base, bench.onnx_file)
        bench.extra_feeds = {}
        bench.images = np.load(images_path)
        bench._setup(Path(fp32_path), model, base, work_dir, unit_kind, units, cache_dir, runtime)
        return bench

    @property
    def num_eval_images(self) -> int:
        return len(self.images)

    def score(self, path: Path, metric: str, limit: int | None) -> float:
        """The output error (percent) of an ONNX file on the first `limit` held-out images (all when None)."""
        if metric != "output-error":
            raise UserError(f"{self.onnx_file}: a model exported elsewhere has no {metric} here (its task metric is "
                            "unknown); use --metric output-error, which ranks by how far the outputs move from FP32")
        return self.output_error(path, limit or self.num_eval_images)

    def output_error(self, path: Path, limit: int) -> float:
        """Relative L2 error (percent) of each output against FP32 over the images, averaged over the outputs."""
        from vggt_deploy.graph.onnx_io import load_onnx
        from vggt_deploy.quant.compare import output_agreement

        path = Path(path)
        if path == self.fp32_path:
            return 0.0  # FP32 against itself: nothing to run
        agreement = output_agreement(self.fp32, load_onnx(path), self.images[:limit], self.image_input,
                                     self.extra_feeds)
        self._agreement[path] = agreement
        return 100.0 * float(np.mean([a["rel_l2"] for a in agreement.values()]))
