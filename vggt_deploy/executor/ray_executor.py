"""Tasks as Ray tasks: on a local Ray instance (``--executor ray``) or a cluster (``ray:ADDRESS``).

- **Artifacts** (`share`) go into the object store once per content hash; a
  node fetches each once (see `vggt_deploy.executor.shared`).
- **Faults**: a task whose worker dies (killed, out of memory, node lost) is
  retried up to `max_retries` times by Ray. An exception raised by the task
  itself (a real failure, say an export error) is not retried: it becomes a
  failed `Outcome` with its reason, and the other tasks go on.
- **Timing**: a timing task asks for `TIMING_RESOURCE` and every CPU of one
  node that offers it, pinned to that node, so it runs alone there, one at a
  time; every timing task of one executor goes to the same node, which its
  outcome names. Nodes that may time are started with
  ``ray start ... --resources '{"bench_node": 1}'``; the local instance this
  executor starts offers it.
- Scoring tasks take one CPU each; their inference uses that many threads
  (`task_threads`), so tasks side by side do not fight over cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vggt_deploy.errors import UserError
from vggt_deploy.executor.base import (
    TIMING_RESOURCE,
    Executor,
    Outcome,
    ResultCache,
    Task,
    call_task,
    error_text,
    this_node,
)
from vggt_deploy.executor.shared import Shared, pack

INSTALL = "pip install 'vggt-deploy[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL} (or use --executor local)") from None
    return ray


_REMOTE = None


def _remote(ray):
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(call_task)
    return _REMOTE


class RayExecutor(Executor):
    """Runs tasks on Ray.

    Args:
        address: a running cluster (``auto``, ``HOST:PORT``); None starts a local instance with this machine's
            CPUs and the timing resource (or uses the one this process already started, as tests do).
        results: the result cache (kept by this process, the driver).
        max_retries: how often a task whose worker died is run again.
    """

    name = "ray"

    def __init__(self, address: str | None = None, results: ResultCache | None = None, max_retries: int = 3) -> None:
        super().__init__(results)
        self.ray = import_ray()
        self.max_retries = max_retries
        self._owns = False
        if not self.ray.is_initialized():
            try:
                if address:
                    self.ray.init(address=address, log_to_driver=False)
                else:
                    self.ray.init(num_cpus=os.cpu_count() or 1, resources={TIMING_RESOURCE: 1},
                                  include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise UserError(f"--executor ray:{address}: cannot join the Ray cluster ({exc}); start it with "
                                "`ray start --head` and pass its address (or ray:auto on a node of it)") from None
            self._owns = True
        self._shared: dict[str, Shared] = {}
        self._timing_node: dict | None = None

    def share(self, path: str | Path) -> Shared:
        local = Shared.of(path)
        if local.digest not in self._shared:
            self._shared[local.digest] = Shared(local.digest, local.name, local.origin, local.is_dir,
                                                ref=self.ray.put(pack(Path(path))))
        return self._shared[local.digest]

    def _timing_options(self) -> dict:
        """Pinned to one node that offers the timing resource, holding all its CPUs."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._timing_node is None:
            nodes = [n for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get(TIMING_RESOURCE)]
            if not nodes:
                raise UserError(f"no node of the Ray cluster offers the {TIMING_RESOURCE} resource, so nothing may "
                                "time latency: start one node with `ray start ... --resources "
                                f"'{{\"{TIMING_RESOURCE}\": 1}}'`, or skip timing (--latency-rounds 0)")
            here = self.ray.get_runtime_context().get_node_id()
            self._timing_node = next((n for n in nodes if n["NodeID"] == here), nodes[0])
        node = self._timing_node
        return {"num_cpus": node["Resources"].get("CPU", 1), "resources": {TIMING_RESOURCE: 1},
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}

    def _execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        from ray.exceptions import RayTaskError

        remote = _remote(self.ray)
        pending = {}
        for task in tasks:
            options = {"max_retries": self.max_retries, "retry_exceptions": False, "num_cpus": 1}
            if task.timing:
                options.update(self._timing_options())
            cpus = max(1, int(options["num_cpus"]))
            pending[remote.options(**options).remote(task.fn, task.args, cpus)] = task
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    value, node, seconds = self.ray.get(ref)
                except RayTaskError as exc:  # the task raised: a real failure, not retried
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    yield Outcome(task.key, task.label, False, error=error_text(cause), detail=str(exc))
                    continue
                except self.ray.exceptions.RayError as exc:  # the worker or node died more than max_retries times
                    yield Outcome(task.key, task.label, False,
                                  error=f"lost its worker {self.max_retries + 1} times ({type(exc).__name__})",
                                  detail=str(exc))
                    continue
                yield Outcome(task.key, task.label, True, value=value, node=node, seconds=seconds)

    def describe(self) -> dict:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"executor": self.name, "node": this_node(), "tasks": dict(self.counts), "nodes": len(nodes),
                "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
                "timing_node": self._timing_node["NodeID"][:12] if self._timing_node else None}

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False
