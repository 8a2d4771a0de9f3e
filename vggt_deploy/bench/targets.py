"""The benchmark's targets: a registry of name -> how to build a `Runner` for it.

Each target is registered with `@register_target` (as models are with
`@register_model`): a name, a description, the backend row of the capability
table it runs on, its precision, the runtime and the plan it represents (both
recorded in every result row), and a builder ``(Builds, BenchConfig) ->
(Runner, file)``. Exports are shared through `Builds`, so every ONNX Runtime
and OpenVINO target of one run reads the same FP32 and QDQ files.

CPU targets: ours (`ort-*`, `ov-*`) and the peers a user would otherwise pick
(`torch-int8-dynamic`, `ort-quantize-static`, `ort-quantize-dynamic`,
`nncf-ov`). GPU targets: TensorRT engines (`trt-*`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.torch.runner import TorchRunner
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_json, sha256_file
from vggt_deploy.paths import shipped_plan


@dataclass
class BenchConfig:
    model_dir: Path
    build_dir: Path
    mixed_plan: Path | None = None
    device: str = "cpu"
    targets: tuple[str, ...] = ()
    batch: int = 1
    eval_images: int = 1000
    warmup: int = 10
    rounds: int = 50
    threads: int = 2
    burst: int = 4  # timed calls per target per round (see bench.timing)


Builder = Callable[["Builds", BenchConfig], tuple[Runner, Path]]


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str  # a row of the capability table
    precision: str
    runtime: str  # what runs it, as recorded in the results (e.g. "openvino 2026.4, bf16")
    plan: str | None  # the shipped plan it quantizes with (None: float or a peer's own quantizer)
    build: Builder
    device: str = "cpu"

    @property
    def int8(self) -> bool:
        """Compared against the int8 MatMul peak."""
        return self.precision not in ("fp32", "f32", "bf16", "fp16")


TARGETS: dict[str, Target] = {}
PEER_KEY = "peer.json"  # beside a peer's cached file: what it was made from (Builds.peer_key)


def register_target(name: str, description: str, backend: str, precision: str, runtime: str,
                    plan: str | None = None, device: str = "cpu") -> Callable[[Builder], Builder]:
    """Register a builder under `name` (registration order is the table's order)."""

    def wrap(fn: Builder) -> Builder:
        TARGETS[name] = Target(name, description, backend, precision, runtime, plan, fn, device)
        return fn

    return wrap


def targets_for(device: str) -> dict[str, Target]:
    """CPU targets everywhere, plus the GPU targets on cuda/jetson."""
    return {n: t for n, t in TARGETS.items() if t.device == "cpu" or device != "cpu"}


class Builds:
    """Lazily exported artifacts shared by targets (one FP32 export for all of them)."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self._exports: dict[str, Path] = {}

    def export(self, plan_name: str | None, target: str | None = None) -> Path:
        """The model exported with a shipped plan (None: FP32), in the plan's or `target`'s QDQ flavour.

        The `mixed` plan is `--plan` when the user gave one.
        """
        from vggt_deploy.compile import export_from_model
        from vggt_deploy.quant.plan import load_plan

        key = (plan_name or "fp32") + (f"-{target}" if target else "")
        if key not in self._exports:
            path = (self.cfg.mixed_plan if plan_name == "mixed" else None) or shipped_plan(plan_name or "")
            plan = load_plan(path, target=target) if plan_name else None
            out = export_from_model(self.cfg.model_dir, self.cfg.build_dir / key, plan)
            self._exports[key] = out.qdq or out.fp32
        return self._exports[key]

    def queries(self) -> np.ndarray:
        return np.load(self.export(None).parent / "queries.npy")

    def calibration_images(self, num_images: int | None = None) -> np.ndarray:
        """The shipped calibration images through the model's preprocessing, as many as the `mixed` plan
        calibrates on (None), so the peers' quantizers see what ours does."""
        from vggt_deploy.model.io import load_model
        from vggt_deploy.quant.calibrate import calibration_tensors
        from vggt_deploy.quant.plan import CalibrationSpec

        pp = load_model(self.cfg.model_dir).model.cfg.preprocess
        count = self.calibration_count() if num_images is None else num_images
        return calibration_tensors(CalibrationSpec(method="minmax", num_images=count), pp)

    def calibration_count(self) -> int:
        """How many calibration images the `mixed` plan (`--plan`, else the shipped one) calibrates on."""
        from vggt_deploy.quant.plan import CalibrationSpec, load_plan

        try:
            return load_plan(self.cfg.mixed_plan or shipped_plan("mixed")).calibration.num_images
        except UserError:  # a broken --plan fails the mixed targets with its own message, not the peers
            return CalibrationSpec().num_images

    def peer_key(self, quantizer: str, calibrated: bool) -> dict:
        """What a peer's quantized file depends on: the model's weights and config, the quantizer's version
        and, when it calibrates, how many images it saw. A cached peer is reused only when this matches."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            quantizer_version = version(quantizer)
        except PackageNotFoundError:
            quantizer_version = "unknown"
        model = self.cfg.model_dir
        key = {"quantizer": quantizer, "version": quantizer_version,
               "model_sha256": sha256_file(model / "model.safetensors"),
               "config_sha256": sha256_file(model / "config.json")}
        if calibrated:
            key["calibration_images"] = self.calibration_count()
        return key


def _cached_peer(out: Path, key: dict) -> bool:
    """True when `out` exists and its folder's peer.json says it was made from `key`."""
    try:
        return out.exists() and json.loads((out.parent / PEER_KEY).read_text()) == key
    except (OSError, ValueError):
        return False


# ---- PyTorch ---------------------------------------------------------------------------------------


def _torch(dynamic: bool) -> Builder:
    def build(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
        name = "torch-int8-dynamic" if dynamic else "torch-fp32"
        runner = TorchRunner(cfg.model_dir, name=name, dynamic_int8=dynamic, threads=cfg.threads)
        return runner, cfg.model_dir / "model.safetensors"

    return build


register_target("torch-fp32", "PyTorch eager, float32", "torch", "fp32", "torch")(_torch(False))
register_target("torch-int8-dynamic", "PyTorch dynamic int8 (quantize_dynamic on Linear) - peer", "torch",
                "int8-dynamic", "torch")(_torch(True))


# ---- ONNX Runtime ----------------------------------------------------------------------------------


def _ort(plan: str | None) -> Builder:
    def build(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
        path = builds.export(plan)
        return OrtRunner(path, name=f"ort-{plan or 'fp32'}", threads=cfg.threads), path

    return build


register_target("ort-fp32", "ONNX Runtime CPU, float32", "onnxruntime", "fp32", "onnxruntime")(_ort(None))
register_target("ort-int8", "ONNX Runtime CPU, uniform int8 plan (int8.yaml)", "onnxruntime", "int8",
                "onnxruntime", plan="int8")(_ort("int8"))
register_target("ort-mixed", "ONNX Runtime CPU, the shipped mixed plan", "onnxruntime", "mixed",
                "onnxruntime", plan="mixed")(_ort("mixed"))


@register_target("ort-quantize-static", "onnxruntime.quantization.quantize_static defaults - peer", "onnxruntime",
                 "int8", "onnxruntime")
def _ort_quantize_static(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
    """The peer a user would otherwise pick: onnxruntime's quantize_static with its defaults."""
    from onnxruntime.quantization import quantize_static

    from vggt_deploy.quant.calibrate import TensorReader

    out = cfg.build_dir / "ort-quantize-static" / "model.qdq.onnx"
    key = builds.peer_key("onnxruntime", calibrated=True)
    if not _cached_peer(out, key):
        fp32 = builds.export(None)
        reader = TensorReader(builds.calibration_images(), "images", {"query_embeds": builds.queries()})
        _write_peer(out, lambda tmp: quantize_static(str(fp32), str(tmp), reader), key)
    return OrtRunner(out, name="ort-quantize-static", threads=cfg.threads), out


@register_target("ort-quantize-dynamic", "onnxruntime.quantization.quantize_dynamic defaults - peer",
                 "onnxruntime", "int8", "onnxruntime")
def _ort_quantize_dynamic(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
    """The other ONNX Runtime peer: weights int8, activation scales computed at run time."""
    from onnxruntime.quantization import quantize_dynamic

    out = cfg.build_dir / "ort-quantize-dynamic" / "model.onnx"
    key = builds.peer_key("onnxruntime", calibrated=False)
    if not _cached_peer(out, key):
        fp32 = builds.export(None)
        _write_peer(out, lambda tmp: quantize_dynamic(str(fp32), str(tmp)), key)
    return OrtRunner(out, name="ort-quantize-dynamic", threads=cfg.threads), out


def _write_peer(out: Path, write: Callable[[Path], object], key: dict) -> None:
    """Run a peer's quantizer into a temporary name, check the result, then rename it into place;
    its key (peer.json) is written last, so a half-done rebuild is never taken for a current one."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # onnxruntime's calibrators print to stdout (--json's)
            write(tmp)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, out)
        atomic_write_json(out.parent / PEER_KEY, key)
    finally:
        tmp.unlink(missing_ok=True)


# ---- OpenVINO --------------------------------------------------------------------------------------


def _ov(plan: str | None, precision: str | None) -> Builder:
    """The same FP32 or QDQ ONNX file the ONNX Runtime targets run, compiled by OpenVINO's CPU plugin."""

    def build(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
        from vggt_deploy.backends.openvino.runner import OvRunner

        path = builds.export(plan)
        name = f"ov-{plan}" if plan else f"ov-{precision}"
        runner = OvRunner(path, name=name, threads=cfg.threads, precision=precision,
                          cache_dir=cfg.build_dir / "openvino-cache")
        return runner, path

    return build


register_target("ov-fp32", "OpenVINO CPU, float32 graph, f32 inference", "openvino", "f32", "openvino")(
    _ov(None, "f32"))
register_target("ov-bf16", "OpenVINO CPU, float32 graph, bf16 inference (the float baseline on modern CPUs)",
                "openvino", "bf16", "openvino")(_ov(None, "bf16"))
register_target("ov-int8", "OpenVINO CPU, uniform int8 plan (QDQ), float parts in bf16 where the CPU has it",
                "openvino", "int8", "openvino", plan="int8")(_ov("int8", None))
register_target("ov-mixed", "OpenVINO CPU, the shipped mixed plan (QDQ), float parts in bf16 where the CPU has it",
                "openvino", "mixed", "openvino", plan="mixed")(_ov("mixed", None))


@register_target("nncf-ov", "NNCF post-training quantization (TRANSFORMER preset, same calibration images), "
                 "run in OpenVINO - peer", "openvino", "int8", "openvino + nncf")
def _nncf_ov(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
    """OpenVINO's own quantizer on the FP32 export, calibrated on the images our plans use."""
    from vggt_deploy.backends.openvino.loader import import_openvino
    from vggt_deploy.backends.openvino.runner import OvRunner

    out = cfg.build_dir / "nncf-ov" / "model.xml"
    key = builds.peer_key("nncf", calibrated=True)
    if not _cached_peer(out, key):
        try:
            import nncf
        except ImportError:
            raise UserError("the nncf-ov peer needs NNCF: pip install nncf (or vggt-deploy[peers])") from None
        ov = import_openvino()
        images, queries = builds.calibration_images(), builds.queries()
        model = ov.Core().read_model(str(builds.export(None)))
        items = [{"images": image[None], "query_embeds": queries} for image in images]
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(items))
        tmp = out.parent.with_name(f".{out.parent.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # both live in the bench's own build folder
        ov.save_model(quantized, str(tmp / out.name))
        atomic_write_json(tmp / PEER_KEY, key)
        shutil.rmtree(out.parent, ignore_errors=True)
        os.replace(tmp, out.parent)
    runner = OvRunner(out, name="nncf-ov", threads=cfg.threads, cache_dir=cfg.build_dir / "openvino-cache")
    return runner, out


# ---- TensorRT (cuda, jetson) -----------------------------------------------------------------------


def _trt(plan: str | None, int8: bool) -> Builder:
    """A TensorRT engine from the FP32 export (fp16) or a TensorRT-flavour QDQ export (int8 + fp16)."""

    def build(builds: Builds, cfg: BenchConfig) -> tuple[Runner, Path]:
        from vggt_deploy.backends.tensorrt.build import build_engine
        from vggt_deploy.backends.tensorrt.runner import TrtRunner
        from vggt_deploy.backends.tensorrt.settings import BuildOptions

        onnx_path = builds.export(plan, target="tensorrt" if plan else None)
        name = f"trt-{plan or 'fp16'}"
        engine = cfg.build_dir / name / "model.engine"
        options = BuildOptions(int8=int8, fp16=True, opt_batch=cfg.batch, max_batch=max(8, cfg.batch))
        build_engine(onnx_path, engine, options, timing_cache=cfg.build_dir / "timing.cache")
        return TrtRunner(engine, name=name), engine

    return build


register_target("trt-fp16", "TensorRT, fp16", "tensorrt", "fp16", "tensorrt", device="cuda")(_trt(None, False))
register_target("trt-int8", "TensorRT, uniform int8 plan (QDQ) + fp16 elsewhere", "tensorrt", "int8", "tensorrt",
                plan="int8", device="cuda")(_trt("int8", True))
register_target("trt-mixed", "TensorRT, mixed plan (QDQ) + fp16 elsewhere", "tensorrt", "mixed", "tensorrt",
                plan="mixed", device="cuda")(_trt("mixed", True))
