"""Tasks, their outcomes, the result cache, and the in-process executor.

A `Task` is one unit of work: a module-level function and its arguments
(picklable, so Ray can ship it), with a `key`, the content hash of everything
that decides its result (`task_key`). `Executor.run` looks every key up in the
`ResultCache` first, runs only what is missing, and stores each success as
soon as it arrives (one JSON file per key, written atomically). So:

- an interrupted analysis resumes from the tasks already finished;
- a result is recorded once per key, however often a worker was retried;
- a task that fails (an export error, a bad input) becomes an `Outcome` with
  its reason, and the other tasks still run; the caller decides what a
  missing result means (see `failed_summary`).

Timing tasks (`Task.timing`) are never cached: latency is only comparable
within one alternating run, so it is measured again on every run.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_text

EXECUTOR_HELP = ("Where the variants run: local (this process, one after the other) or ray, ray:ADDRESS (a local "
                 "Ray instance, or the cluster at ADDRESS, e.g. ray:auto or ray:10.0.0.5:6379; needs "
                 "`pip install 'vggt-deploy[ray]'`). Results are the same; finished variants are cached by content "
                 "hash under the work folder, so an interrupted run resumes.")
TIMING_RESOURCE = "bench_node"  # custom Ray resource of a node that may time (one timing task per node at a time)
CACHE_VERSION = 1  # bump when what a cached outcome holds changes


def task_key(*parts: Any) -> str:
    """The content hash of a task: its function's name and everything that decides its result.

    `parts` must be JSON-able (digests, plan text, unit names, limits); the package version is mixed in, so
    results computed by another release are not reused.
    """
    from vggt_deploy import __version__

    text = json.dumps([CACHE_VERSION, __version__, *parts], sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"task_key: {type(obj).__name__} is not a stable key part")


@dataclass(frozen=True)
class Task:
    """One unit of work.

    Args:
        key: content hash (`task_key`): equal keys are the same work, done once.
        label: what a person calls it (``only:blocks.3``); shown in progress and errors.
        fn: a module-level function (Ray ships it by reference) returning a JSON-able value.
        args: its arguments (picklable; large inputs as `Shared` artifacts).
        timing: measures latency: holds a whole node (`TIMING_RESOURCE`) and is never cached.
    """

    key: str
    label: str
    fn: Callable[..., Any]
    args: tuple = ()
    timing: bool = False


@dataclass
class Outcome:
    """What became of a task: its value, or why it failed; where it ran and for how long."""

    key: str
    label: str
    ok: bool
    value: Any = None
    error: str | None = None
    node: str = ""
    seconds: float = 0.0
    cached: bool = False  # taken from the result cache (finished by an earlier run)
    detail: str = field(default="", repr=False)  # traceback of a failure, for --verbose output

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("detail")
        data.pop("cached")
        return data


class ResultCache:
    """Finished tasks as ``<key>.json`` files in one folder (written atomically; unreadable ones are ignored)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Outcome | None:
        try:
            data = json.loads(self._path(key).read_text())
            outcome = Outcome(**data)
        except (OSError, ValueError, TypeError):
            return None
        if outcome.key != key or not outcome.ok:
            return None
        outcome.cached = True
        return outcome

    def put(self, outcome: Outcome) -> None:
        # NaN is allowed here (a metric with nothing to score is NaN): these files are read only by this class.
        atomic_write_text(self._path(outcome.key), json.dumps(outcome.to_json(), indent=1) + "\n")

    def keys(self) -> set[str]:
        return {p.stem for p in self.folder.glob("*.json")} if self.folder.is_dir() else set()


def this_node() -> str:
    """The host a task ran on (with the Ray node id inside a Ray worker)."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")  # never imported here: a process without Ray is not on a Ray node
    if ray is not None and ray.is_initialized():
        return f"{host}/{ray.get_runtime_context().get_node_id()[:12]}"
    return host


_TASK_CPUS: int | None = None  # CPUs the running task was given (set by the executor that runs it)


def task_threads() -> int | None:
    """Threads the running task may use for inference (None: the runtime's own default).

    Inside a Ray task this is the CPUs Ray gave it, so tasks side by side on a node do not fight over
    cores; in this process (the local executor) the runtimes keep their defaults.
    """
    return _TASK_CPUS


def call_task(fn: Callable[..., Any], args: tuple, cpus: int | None = None) -> tuple[Any, str, float]:
    """Run one task where it landed: its value, the node, the seconds it took."""
    global _TASK_CPUS
    _TASK_CPUS = cpus
    start = time.perf_counter()
    try:
        value = fn(*args)
    finally:
        _TASK_CPUS = None
    return value, this_node(), time.perf_counter() - start


def error_text(exc: BaseException) -> str:
    """A failure's reason as a person reads it: the message of a UserError, else type and message."""
    if isinstance(exc, UserError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Executor:
    """Runs tasks; subclasses say where (`_execute`) and how artifacts travel (`share`).

    Args:
        results: where finished tasks are cached (None: no cache, every run starts over).
    """

    name = "local"

    def __init__(self, results: ResultCache | None = None) -> None:
        self.results = results
        # Over every `run` of this executor: tasks read back from the cache, run, and failed.
        self.counts = {"cached": 0, "ran": 0, "failed": 0}

    def share(self, path: str | Path):
        """A `Shared` handle to a file or folder, addressed by content hash (sent once per node, not per task)."""
        from vggt_deploy.executor.shared import Shared

        return Shared.of(path)

    def run(self, tasks: Iterable[Task], desc: str = "tasks", progress: bool = True) -> dict[str, Outcome]:
        """Every task's outcome by key: cached ones read back, the rest run (duplicate keys run once)."""
        unique: dict[str, Task] = {}
        for task in tasks:
            unique.setdefault(task.key, task)
        outcomes: dict[str, Outcome] = {}
        todo = []
        for key, task in unique.items():
            cached = self.results.get(key) if self.results is not None and not task.timing else None
            if cached is not None:
                outcomes[key] = cached
                self.counts["cached"] += 1
            else:
                todo.append(task)
        bar = tqdm(total=len(unique), initial=len(outcomes), desc=desc, unit="task", disable=not progress)
        with bar:
            for outcome in self._execute(todo):
                if outcome.ok and self.results is not None and not unique[outcome.key].timing:
                    self.results.put(outcome)
                outcomes[outcome.key] = outcome
                self.counts["ran" if outcome.ok else "failed"] += 1
                bar.set_postfix_str(outcome.label if outcome.ok else f"{outcome.label} FAILED")
                bar.update(1)
        return outcomes

    def _execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Run `tasks`, yielding each outcome as it finishes (any order)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started."""

    def __enter__(self) -> Executor:  # noqa: PYI034 - as Runner.__enter__ (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """Where the tasks ran, for the results' ``execution`` record."""
        return {"executor": self.name, "node": this_node(), "tasks": dict(self.counts)}


class LocalExecutor(Executor):
    """One task after the other, in this process (timing tasks included: nothing else runs beside them)."""

    def _execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            try:
                value, node, seconds = call_task(task.fn, task.args)
            except Exception as exc:  # noqa: BLE001 - a failed variant is reported; the others still run
                yield Outcome(task.key, task.label, False, error=error_text(exc), node=this_node(),
                              detail=traceback.format_exc())
                continue
            yield Outcome(task.key, task.label, True, value=value, node=node, seconds=seconds)


def failed_summary(outcomes: dict[str, Outcome], limit: int = 5) -> str | None:
    """One message naming the failed tasks and their reasons (None when every task succeeded)."""
    failed = [o for o in outcomes.values() if not o.ok]
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(outcomes)} tasks failed:"]
    lines += [f"  {o.label}: {o.error}" for o in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more")
    lines.append("finished tasks are cached; fix the cause and run the same command again to resume")
    return "\n".join(lines)


def check_executor(spec: str) -> None:
    """Refuse a bad `--executor` value, or Ray missing, before any work is done."""
    if spec == "local":
        return
    if spec == "ray" or spec.startswith("ray:"):
        from vggt_deploy.executor.ray_executor import import_ray

        import_ray()
        return
    raise UserError(f"--executor {spec!r}: expected local, ray or ray:ADDRESS (e.g. ray:auto, ray:10.0.0.5:6379)")


def make_executor(spec: str, results_dir: str | Path | None = None) -> Executor:
    """The executor `--executor SPEC` names: ``local``, ``ray`` (a local Ray instance) or ``ray:ADDRESS``."""
    check_executor(spec)
    results = ResultCache(results_dir) if results_dir is not None else None
    if spec == "local":
        return LocalExecutor(results)
    from vggt_deploy.executor.ray_executor import RayExecutor

    return RayExecutor(address=spec[4:] or None, results=results)
