"""Workbenches for measuring plan variants of one model: build, score, time.

Sensitivity analysis and the automatic plan both need the same things: one
FP32 graph, the calibration inputs (loaded once; the range cache is shared by
every variant), held-out data, and for any set of quantized units a QDQ model
that is scored and timed side by side with the others.

- `BaseWorkbench`: what every model shares (units, plans, builds, latency);
- `Workbench`: this project's own models (a model folder), scored with the real
  evaluation (pycocotools mAP) or by how far boxes and logits move from FP32;
- `vggt_deploy.tuning.foreign.ForeignWorkbench`: an ONNX file exported elsewhere,
  scored by output error only (its task metric is unknown).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from vggt_deploy.data.preprocess import PreprocessConfig
from vggt_deploy.errors import UserError
from vggt_deploy.executor import task_threads
from vggt_deploy.paths import calibration_cache_dir
from vggt_deploy.quant.plan import QdqPlan, Rule
from vggt_deploy.quant.plan_targets import KEPT_FLOAT
from vggt_deploy.tuning.units import Unit, model_units, quantizable_units, select_units, unit_plan

METRICS = ("map", "output-error")


def exact_units(units: list[Unit], layer_names: list[str]) -> list[Unit]:
    """`units`, each with a pattern that selects exactly its own layers.

    A block unit's ``name.*`` pattern misses a layer called just ``name`` (a top-level ``head``
    Linear of a foreign model, or a layer named after its ONNX node): such a unit gets a pattern
    listing its layers, so it can still be kept float or quantized on its own.
    """
    # Attention matmuls inside a block may match the block's pattern: `unit_plan` writes the attention
    # unit's rule before those, so only the other units' layers must stay out of a pattern.
    attention = {n for u in units if u.attention for n in u.layers}
    out = []
    for unit in units:
        rule = Rule(unit.pattern, {}, 0)
        selected = {n for n in layer_names if n not in attention and rule.matches(n)}
        if not unit.attention and selected != set(unit.layers):
            if len(unit.layers) == 1 and not any(c in unit.layers[0] for c in "*?[]"):
                pattern = unit.layers[0]  # a glob without wildcards matches only itself
            else:
                pattern = "re:(?:" + "|".join(re.escape(n) for n in unit.layers) + ")"
            unit = dataclasses.replace(unit, pattern=pattern)
        out.append(unit)
    return out


class BaseWorkbench:
    """What every workbench shares: units, variant plans, builds (cached), latency.

    A subclass constructor loads or exports its FP32 graph and calls `_setup`; it defines `score`
    (``metric`` is one of `METRICS`; ``limit`` the first images of the held-out data, None: all)
    and `num_eval_images` (the size of the full held-out set).
    """

    image_input: str  # the graph input the images go to
    extra_feeds: dict[str, np.ndarray]  # values of the other graph inputs (the same for every image)
    preprocess: PreprocessConfig

    def _setup(self, fp32_path: Path, fp32: onnx.ModelProto, base: QdqPlan, work_dir: Path, unit_kind: str,
               units: Iterable[str], cache_dir: Path | None, runtime: str) -> None:
        from vggt_deploy.graph.layers import find_layers

        self.base, self.work_dir, self.unit_kind, self.runtime = base, Path(work_dir), unit_kind, runtime
        self.cache_dir = cache_dir or calibration_cache_dir()
        self.fp32_path, self.fp32 = Path(fp32_path), fp32
        self.layers = find_layers(self.fp32)
        all_units = exact_units(model_units(self.layers, unit_kind), self.layer_names)
        self.all_units = quantizable_units(all_units, self.layers, base)
        if not self.all_units:
            raise UserError(f"{base.source}: the base plan quantizes no layer, so there is nothing to analyse")
        self.units = select_units(self.all_units, list(units)) if units else self.all_units
        self._built: dict[frozenset[str], Path] = {}
        # Files already in work_dir may be reused: only true where work_dir is named by the recipe
        # (`variant_tasks.workbench_for`), so a file there can only be this variant.
        self.reuse_built = False
        self._agreement: dict[Path, dict] = {}

    @property
    def num_eval_images(self) -> int:
        """Images in the full held-out set (what `score(..., limit=None)` uses)."""
        raise NotImplementedError

    def score(self, path: Path, metric: str, limit: int | None) -> float:
        """The metric's value for an ONNX file on the first `limit` held-out images (all when None)."""
        raise NotImplementedError

    def agreement(self, path: Path) -> dict | None:
        """Per-output agreement with FP32 (`quant.compare.output_agreement`) of the last output-error
        score of `path`, when the workbench measures it that way (None otherwise)."""
        return self._agreement.get(Path(path))

    @functools.cached_property
    def calib(self) -> np.ndarray:
        """Calibration inputs of the base plan (loaded on first use; a range-cache hit never reads them)."""
        from vggt_deploy.quant.calibrate import calibration_tensors

        return calibration_tensors(self.base.calibration, self.preprocess)

    @functools.cached_property
    def _ranges_file(self) -> Path:
        """The range-cache file every variant shares (same FP32 model, same calibration section)."""
        from vggt_deploy.quant.calibrate import cache_path

        return cache_path(self.cache_dir, self.fp32.SerializeToString(), self.base.calibration, self.base.target)

    def _calibration(self) -> np.ndarray | None:
        """None when the range cache already holds this model's ranges (quantize reads them from there).

        Smoothing and LayerNorm folding measure activations on the calibration images, so a plan with
        either always needs them.
        """
        default = self.base.default
        rewrites = (default.smoothing is not None or default.fold_norm
                    or any("smoothing" in r.overrides or r.overrides.get("fold_norm") for r in self.base.rules))
        return None if self._ranges_file.is_file() and not rewrites else self.calib

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    def plan(self, quantized: Iterable[str], comments: dict[str, str] | None = None, header: str = "") -> QdqPlan:
        """The plan with `quantized` units as in the base plan and every other analysed unit in float.

        Units outside the analysis (when `units` was restricted) stay quantized as the base plan says.
        """
        chosen = set(quantized) | {u.name for u in self.all_units if u not in self.units}
        return unit_plan(self.base, self.all_units, chosen, self.layer_names, comments, header)

    def build(self, quantized: Iterable[str]) -> Path:
        """The QDQ file of a variant (built once; the calibration ranges come from the shared cache).

        No quantized unit gives the FP32 file itself, except where float units are bf16 (openvino-cpu): there
        it is the all-float plan's file (weights stored 16-bit), so sizes and latencies compare like with like.
        """
        key = frozenset(quantized)
        if key not in self._built:
            if not key and KEPT_FLOAT[self.base.target] == "fp32":
                self._built[key] = self.fp32_path
            else:
                name = hashlib.sha256("\n".join(sorted(key)).encode()).hexdigest()[:16]
                path = self.work_dir / "variants" / f"v-{name}.onnx"
                # A file of another process of this node's tasks (same recipe folder) is the same variant.
                reuse = self.reuse_built and path.is_file()
                self._built[key] = path if reuse else self._quantize(self.plan(key), path)
        return self._built[key]

    @functools.cached_property
    def _base_file(self) -> Path:
        path = self.work_dir / "variants" / "base.onnx"
        return path if self.reuse_built and path.is_file() else self._quantize(self.base, path)

    def build_base(self) -> Path:
        """The QDQ file of the base plan itself (the uniform baseline a plan is compared with)."""
        return self._base_file

    def _quantize(self, plan: QdqPlan, path: Path) -> Path:
        """Quantize the FP32 graph with `plan`, check TensorRT's rules for that flavour, save to `path`."""
        from vggt_deploy.backends.tensorrt.rules import validate_tensorrt
        from vggt_deploy.graph.onnx_io import save_onnx
        from vggt_deploy.quant.qdq import quantize
        from vggt_deploy.quant.resolved import resolve_plan

        result = quantize(self.fp32, resolve_plan(plan, list(self.layers)), self._calibration(), self.extra_feeds,
                          self.image_input, self.cache_dir)
        if plan.target == "tensorrt":  # every TensorRT-flavour variant must pass, as every export does
            violations = validate_tensorrt(result.model)
            if violations:
                raise RuntimeError("TensorRT-flavour variant breaks TensorRT rules:\n  " + "\n  ".join(violations))
        return save_onnx(result.model, path)

    def _latency_feeds(self) -> dict[str, np.ndarray]:
        """Batch-1 inputs for timing: zeros in the image input's shape (latency does not depend on values)."""
        size = self.preprocess.size
        return {self.image_input: np.zeros((1, 3, size, size), np.float32), **self.extra_feeds}

    def latency(self, paths: dict[str, Path], rounds: int = 20) -> dict[str, float]:
        """Median batch-1 latency (ms) of each file in `self.runtime`, timed in alternating rounds in one process."""
        from vggt_deploy.bench.timing import time_onnx_files

        feeds = self._latency_feeds()
        stats = time_onnx_files(paths, {label: feeds for label in paths}, warmup=3, rounds=rounds, runtime=self.runtime)
        return {label: s.p50 for label, s in stats.items()}


class Workbench(BaseWorkbench):
    """FP32 export + calibration + eval data of one of this project's models, and a cache of built variants.

    Args:
        model_dir: a model folder (safetensors + config).
        base: the plan whose per-layer choices a quantized unit takes.
        work_dir: where the FP32 export and the variant QDQ files go.
        unit_kind: ``block`` or ``layer`` (see `vggt_deploy.tuning.units`).
        units: restrict the analysis to these unit names (empty: all quantizable units).
        data_dir: COCO folder to evaluate on (default: the synthetic eval split).
        eval_images: size of the eval split when it is generated.
        cache_dir: calibration range cache (default: the user cache).
        runtime: where latency savings are timed: ``openvino`` (float parts in bf16 where the CPU has
            it) or ``onnxruntime``; plans are tuned on the runtime they are for.
    """

    def __init__(self, model_dir: Path, base: QdqPlan, work_dir: Path, unit_kind: str = "block",
                 units: Iterable[str] = (), data_dir: Path | None = None, eval_images: int = 1000,
                 cache_dir: Path | None = None, runtime: str = "openvino") -> None:
        from vggt_deploy.compile import export_from_model

        exported = export_from_model(Path(model_dir), Path(work_dir) / "fp32")
        self._init(model_dir, exported.fp32, exported.fp32.parent / "queries.npy", base, work_dir, unit_kind, units,
                   data_dir, eval_images, cache_dir, runtime)

    @classmethod
    def from_parts(cls, model_dir: Path, fp32_path: Path, queries_path: Path, base: QdqPlan, work_dir: Path,
                   unit_kind: str, units: Iterable[str], data_dir: Path, cache_dir: Path, runtime: str) -> Workbench:
        """A workbench on an FP32 export made elsewhere (a task on another node: no second export)."""
        bench = cls.__new__(cls)
        bench._init(model_dir, fp32_path, queries_path, base, work_dir, unit_kind, units, data_dir, None, cache_dir,
                    runtime)
        return bench

    def _init(self, model_dir, fp32_path, queries_path, base, work_dir, unit_kind, units, data_dir, eval_images,
              cache_dir, runtime) -> None:
        from vggt_deploy.model.io import load_model

        self.model_dir = Path(model_dir)
        self.loaded = load_model(model_dir)
        self.preprocess = self.loaded.model.cfg.preprocess
        self.queries_path = Path(queries_path)
        self.queries = np.load(self.queries_path)
        self.image_input, self.extra_feeds = "images", {"query_embeds": self.queries}
        self._setup(Path(fp32_path), onnx.load(str(fp32_path)), base, work_dir, unit_kind, units, cache_dir, runtime)
        self._data_dir, self._eval_images = data_dir, eval_images
        self._reference: dict[int, list[np.ndarray]] = {}

    @functools.cached_property
    def dataset(self):
        """The eval dataset (the synthetic eval split is generated on first use)."""
        from vggt_deploy.data.coco import load_coco, synthetic_split

        return load_coco(self._data_dir or synthetic_split("eval", self._eval_images))

    @property
    def num_eval_images(self) -> int:
        return len(self.dataset.records)

    def evaluate(self, path: Path, limit: int | None) -> dict:
        """Grounding metrics of an ONNX file on the first `limit` eval images (all when None)."""
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner
        from vggt_deploy.bench.evaluate import evaluate, runner_infer

        with OrtRunner(path, name=path.stem, threads=task_threads()) as runner:
            metrics = evaluate(self.loaded, self.dataset, infer=runner_infer(runner), batch_size=32, limit=limit,
                               progress=False)
        metrics.pop("detections")
        return metrics

    def output_error(self, path: Path, limit: int) -> float:
        """Relative L2 error (percent) of boxes and logits against FP32, averaged over both outputs."""
        ref = self._outputs(self.fp32_path, limit)
        out = self._outputs(path, limit)
        errors = [np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12) for o, r in zip(out, ref)]
        return 100.0 * float(np.mean(errors))

    def _outputs(self, path: Path, limit: int) -> list[np.ndarray]:
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner
        from vggt_deploy.data.preprocess import preprocess

        if path == self.fp32_path and limit in self._reference:
            return self._reference[limit]
        records = self.dataset.records[:limit]
        images = np.stack([preprocess(self.dataset.image(r), self.preprocess) for r in records])
        boxes, logits = [], []
        # Batches of 32 rather than output_agreement's batch 1: the FP32 reference is cached per limit here.
        with OrtRunner(path, name=path.stem, threads=task_threads()) as runner:
            for start in range(0, len(images), 32):
                out = runner.infer({self.image_input: images[start : start + 32], **self.extra_feeds})
                boxes.append(out["boxes"])
                logits.append(out["logits"])
        result = [np.concatenate(boxes), np.concatenate(logits)]
        if path == self.fp32_path:
            self._reference[limit] = result
        return result

    def score(self, path: Path, metric: str, limit: int | None) -> float:
        """The metric's value: mAP@[.5:.95], or the output error in percent."""
        if metric == "map":
            return float(self.evaluate(path, limit)["map"])
        return self.output_error(path, limit or self.num_eval_images)
