"""OpenVINO runner on the CPU: the QDQ ONNX as exported, an OpenVINO IR, or a build-ov folder.

OpenVINO reads the QDQ ONNX directly and folds QuantizeLinear/DequantizeLinear pairs into
its int8 kernels, after lowering.py has moved the activation zero points into shifts and biases
(the same quantization grid; OpenVINO's zero-point-free int8 path is faster); the float layers
run in f32 or bf16 (INFERENCE_PRECISION_HINT). With
`static_shapes` (the default; measured 1.3-1.5x faster at batch 1 on this model) the model is
reshaped and compiled once per distinct set of input shapes, lazily, on the first `infer` that
brings it; otherwise it is compiled once with its dynamic dims. A `CACHE_DIR` keeps compiled
blobs between processes; OpenVINO keys them by the model's content and the compile config (for
a model passed as an object, as here), so a build-ov folder's `cache/` stays valid after the
folder is moved. API: openvino.Core (read_model, set_property, compile_model), Model (clone,
reshape, inputs), CompiledModel (outputs, create_infer_request), InferRequest.infer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.backends.openvino.loader import (
    check_precision,
    cpu_flags,
    cpu_name,
    default_precision,
    import_openvino,
    model_metadata,
    ov_errors,
    ov_reason,
    read_model,
)
from vggt_deploy.backends.openvino.lowering import FoldReport, Lowering, lowered_onnx
from vggt_deploy.backends.openvino.rewrites import RewriteReport
from vggt_deploy.backends.openvino.settings import OvOptions, compile_config
from vggt_deploy.backends.openvino.sidecar import CACHE, check_sidecar, read_sidecar
from vggt_deploy.errors import UserError

SUFFIXES = (".onnx", ".xml")
ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


def input_names(model: Any) -> list[str]:
    return [port.get_any_name() for port in model.inputs]


def batch_input(names: list[str]) -> str:
    """The input whose first axis is the image batch: `images`, else the first input."""
    return "images" if "images" in names else names[0]


def reshaped(model: Any, shapes: dict[str, tuple[int, ...]]) -> Any:
    """A copy of `model` with every input fixed to `shapes` (the original stays dynamic)."""
    ov = import_openvino()
    copy = model.clone()
    copy.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
    return copy


def read_for_cpu(core: Any, path: Path, fold: bool, rewrite: bool,
                 single_batch: bool = True) -> tuple[Any, Lowering | None]:
    """The model OpenVINO compiles: an .onnx lowered by lowering.py (zero points folded when `fold`, the exact
    rewrites when `rewrite`, those for batch 1 too when `single_batch`) where that changes anything, else the
    file as it is."""
    if path.suffix.lower() == ".onnx":
        lowered = lowered_onnx(path, fold=fold, rewrite=rewrite, single_batch=single_batch)
        if lowered is not None:
            data, lowering = lowered
            return read_model(core, path, data=data), lowering
    return read_model(core, path), None


def compile_on_cpu(core: Any, model: Any, config: dict, what: Path | str) -> tuple[Any, float, bool]:
    """(compiled model, compile milliseconds, whether it came from the cache); failures are UserErrors."""
    start = time.perf_counter()
    try:
        compiled = core.compile_model(model, "CPU", config)
    except ov_errors() as exc:
        raise UserError(f"{what}: OpenVINO cannot compile it for the CPU ({ov_reason(exc)})") from None
    ms = (time.perf_counter() - start) * 1e3
    try:
        cached = bool(compiled.get_property("LOADED_FROM_CACHE"))
    except ov_errors():  # older OpenVINO without the property
        cached = False
    return compiled, ms, cached


def set_cache(core: Any, cache_dir: Path, required: bool) -> bool:
    """Point `core`'s compiled-blob cache at `cache_dir`; a cache that cannot be made is an error only if `required`."""
    try:
        core.set_property({"CACHE_DIR": str(cache_dir)})
    except ov_errors() as exc:
        if required:
            raise UserError(f"{cache_dir}: OpenVINO cannot use it as a cache folder ({ov_reason(exc)})") from None
        return False
    return True


class OvRunner(Runner):
    """Runs a model with OpenVINO on the CPU.

    Args:
        path: an .onnx file (FP32 or QDQ), an OpenVINO IR .xml (with its .bin), or a folder written by
            `vggt-deploy build-ov` (its sidecar is checked first and its options are the defaults).
        threads: INFERENCE_NUM_THREADS (None: OpenVINO's default).
        precision: f32 or bf16 for the float layers (None: the folder's, else bf16 where the CPU has native bf16).
        hint: latency or throughput (None: the folder's, else latency).
        streams: NUM_STREAMS (None: 1 with the latency hint).
        static_shapes: compile per input-shape set (None: the folder's, else True) or once with dynamic dims.
        fold_zero_points: read a QDQ .onnx with its activation zero points folded (None: True; see lowering.py).
        rewrite_graph: apply the exact rewrites of rewrites.py to an .onnx (None: True).
        cache_dir: compiled-blob cache (a build-ov folder uses its own cache/ unless this is given).
    """

    def __init__(self, path: str | Path, name: str = "openvino", threads: int | None = None,
                 precision: str | None = None, hint: str | None = None, streams: int | None = None,
                 static_shapes: bool | None = None, cache_dir: str | Path | None = None,
                 fold_zero_points: bool | None = None, rewrite_graph: bool | None = None) -> None:
        super().__init__(name)
        self.path = Path(path)
        self._asked = {"threads": threads, "precision": precision, "hint": hint, "streams": streams,
                       "static_shapes": static_shapes, "fold_zero_points": fold_zero_points,
                       "rewrite_graph": rewrite_graph}
        OvOptions(**{k: v for k, v in self._asked.items() if v is not None})  # bad values refused at once
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sidecar: dict | None = None
        self.metadata: dict[str, str] = {}
        self.compiled: dict[ShapeKey | None, tuple[Any, Any]] = {}  # shapes (None: dynamic) -> (compiled, request)
        self.compile_ms: dict[ShapeKey | None, float] = {}
        self.loaded_from_cache: dict[ShapeKey | None, bool] = {}
        self.core = self.model = None
        self.fold_report: FoldReport | None = None  # None: not folded
        self.rewrite_report: RewriteReport | None = None  # None: not rewritten
        # Lowered again without the batch-1-only rewrites for other batch sizes, on the first such compile.
        self.batched_model: Any = None
        self.batched_rewrite_report: RewriteReport | None = None

    def _activate(self) -> None:
        ov = import_openvino()
        model_file, defaults = self.path, {}
        cache_dir, cache_required = self.cache_dir, self.cache_dir is not None
        if self.path.is_dir():
            self.sidecar = read_sidecar(self.path)
            check_sidecar(self.path, self.sidecar, ov.__version__, cpu_name(), cpu_flags())
            recorded = self.sidecar.get("options")
            defaults = {**(recorded if isinstance(recorded, dict) else {}), "precision": self.sidecar["precision"]}
            model_file = self.path / "model.xml"
            cache_dir = cache_dir or self.path / CACHE
        elif not self.path.exists():
            raise UserError(f"{self.path}: model file not found")
        elif self.path.suffix.lower() not in SUFFIXES:
            raise UserError(f"{self.path}: OpenVINO runs an .onnx file, an IR .xml or a build-ov folder, "
                            f"not a {self.path.suffix or 'suffix-less'} file")
        asked = {k: v for k, v in self._asked.items() if v is not None}
        try:
            self.options = OvOptions.from_dict({**defaults, **asked})
        except UserError as exc:
            raise UserError(f"{self.path}: {exc}") from None
        self.core = ov.Core()
        if cache_dir is not None:
            set_cache(self.core, cache_dir, cache_required)
        self.model_file = model_file
        self.model, lowering = read_for_cpu(self.core, model_file, self.options.fold_zero_points,
                                            self.options.rewrite_graph, single_batch=self.options.static_shapes)
        if lowering is not None:
            self.fold_report, self.rewrite_report = lowering.fold, lowering.rewrites
        self.metadata = model_metadata(self.model)
        self.precision, self.precision_note = self._precision(self.options.precision)
        check_precision(self.precision)
        self.config = compile_config(self.options, self.precision)
        self.input_spec = {}
        for port in self.model.inputs:
            try:
                dtype = np.dtype(port.get_element_type().to_dtype())
            except (RuntimeError, TypeError, AttributeError):
                dtype = np.dtype(np.float32)
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            self.input_spec[port.get_any_name()] = (dtype, shape)
        if not self.options.static_shapes:
            self._compile(None, self.model)

    def _precision(self, asked: str | None) -> tuple[str, str]:
        """(inference precision, why): bf16 where the CPU has it, unless the plan pins layers to fp32.

        OpenVINO's CPU plugin applies INFERENCE_PRECISION_HINT to the whole graph: marking single
        nodes (rt_info disable_fp16_compression / keep_original_precision) did not keep them in f32
        (measured with OpenVINO 2026.4), so a plan's fp32 layers are honoured by running f32
        throughout, never by quietly running them in bf16.
        """
        try:
            pinned = json.loads(self.metadata.get("vggt.keep_fp32_nodes", "[]"))
        except ValueError:
            pinned = []
        if not pinned:
            return asked or default_precision(), ""
        if asked == "bf16":
            raise UserError(f"{self.path}: its plan keeps {len(pinned)} layer(s) in fp32, which OpenVINO cannot "
                            "honour inside a bf16 run; use precision f32, or mark those layers bf16 in the plan")
        return "f32", f"f32 throughout: the plan keeps {len(pinned)} layer(s) in fp32"

    def _compile(self, key: ShapeKey | None, model: Any) -> tuple[Any, Any]:
        compiled, ms, cached = compile_on_cpu(self.core, model, self.config, self.model_file)
        entry = (compiled, compiled.create_infer_request())
        self.compiled[key], self.compile_ms[key], self.loaded_from_cache[key] = entry, ms, cached
        return entry

    def _batched(self) -> Any:
        """The model for batches other than 1: the same lowering without the rewrites that pay off at batch 1
        only (`heads_first`); the batch-1 model itself when those did not apply."""
        if not (self.rewrite_report and self.rewrite_report.heads_first):
            return self.model
        if self.batched_model is None:
            self.batched_model, lowering = read_for_cpu(self.core, self.model_file, self.options.fold_zero_points,
                                                        self.options.rewrite_graph, single_batch=False)
            self.batched_rewrite_report = lowering.rewrites if lowering else None
        return self.batched_model

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        if self.options.static_shapes:
            key = tuple((name, tuple(feeds[name].shape)) for name in self.input_spec)
            entry = self.compiled.get(key)
            if entry is None:
                batch = dict(key)[batch_input(list(self.input_spec))][:1]
                entry = self._compile(key, reshaped(self.model if batch == (1,) else self._batched(), dict(key)))
        else:
            entry = self.compiled[None]
        compiled, request = entry
        try:
            result = request.infer(feeds, share_inputs=True, share_outputs=True)
        except ov_errors() as exc:
            raise UserError(f"{self.name}: OpenVINO inference failed ({ov_reason(exc)})") from None
        return {port.get_any_name(): np.array(result[port], copy=True) for port in compiled.outputs}

    def _close(self) -> None:
        self.compiled.clear()
        self.model = self.batched_model = self.core = None
