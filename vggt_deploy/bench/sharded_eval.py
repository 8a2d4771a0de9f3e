"""`eval` of a large set, cut into shards that run as executor tasks, merged into one COCO evaluation.

Each shard is a task: the model folder, the model file (ONNX, or an
OpenVINO file or folder) and the COCO folder travel as `Shared` artifacts;
the task evaluates one consecutive range of records (`evaluate_part`) and
returns its detections, referring hits, class logits and labels. Shard
boundaries fall on multiples of the batch size, so every batch is the one
an unsharded run would see, and `merge_parts` runs one pycocotools
evaluation over all detections: the metrics equal the unsharded run's.
Finished shards are cached by content hash, so an interrupted evaluation
resumes.
"""

from __future__ import annotations

import functools
from pathlib import Path

from vggt_deploy.bench.evaluate import evaluate_part, merge_parts, runner_infer
from vggt_deploy.executor import Executor, Shared, Task, task_key, task_threads

BACKENDS = ("torch", "onnxruntime", "openvino")


def shard_ranges(num_records: int, shard_images: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of about `shard_images` records, each a whole number of batches."""
    size = max(batch_size, -(-shard_images // batch_size) * batch_size)
    return [(start, min(start + size, num_records)) for start in range(0, num_records, size)]


@functools.lru_cache(maxsize=4)
def _model(model_dir: str):
    from vggt_deploy.model.io import load_model

    return load_model(Path(model_dir))


@functools.lru_cache(maxsize=4)
def _dataset(data_dir: str):
    from vggt_deploy.data.coco import load_coco

    return load_coco(Path(data_dir))


@functools.lru_cache(maxsize=2)
def _infer(backend: str, path: str):
    """An active runner's infer function, kept for the process's later shards (same file)."""
    if backend == "onnxruntime":
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner

        return runner_infer(OrtRunner(Path(path), name=Path(path).name, threads=task_threads()).activate())
    from vggt_deploy.backends.openvino.runner import OvRunner

    return runner_infer(OvRunner(Path(path), name=Path(path).name, threads=task_threads()).activate())


def eval_shard(model: Shared, backend: str, file: Shared | None, data: Shared, start: int, stop: int,
               batch_size: int) -> dict:
    """`evaluate_part` of records [start, stop) of the COCO folder, as JSON-able lists."""
    loaded = _model(str(model.path()))
    dataset = _dataset(str(data.path()))
    infer = None if backend == "torch" else _infer(backend, str(file.path()))
    part = evaluate_part(loaded, dataset, dataset.records[start:stop], infer, batch_size, progress=False)
    part["class_logits"] = part["class_logits"].tolist()
    return part


def evaluate_sharded(executor: Executor, model_dir: Path, data_dir: Path, backend: str = "torch",
                     model_file: Path | None = None, limit: int | None = None, batch_size: int = 16,
                     shard_images: int = 256, progress: bool = True) -> dict:
    """The metrics of `evaluate` (detections included), computed shard by shard on `executor`."""
    from vggt_deploy.errors import UserError
    from vggt_deploy.executor import failed_summary

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")
    dataset = _dataset(str(data_dir))
    records = dataset.records[:limit] if limit else dataset.records
    model = executor.share(model_dir)
    data = executor.share(data_dir)
    file = executor.share(model_file) if model_file is not None else None
    tasks = []
    for start, stop in shard_ranges(len(records), shard_images, batch_size):
        key = task_key("eval_shard", model.digest, backend, file.digest if file else None, data.digest, start, stop,
                       batch_size)
        tasks.append(Task(key, f"images {start}-{stop - 1}", eval_shard,
                          (model, backend, file, data, start, stop, batch_size)))
    outcomes = executor.run(tasks, desc="evaluating shards", progress=progress)
    message = failed_summary(outcomes)
    if message:
        raise UserError(message)
    return merge_parts(dataset, records, [outcomes[t.key].value for t in tasks])
