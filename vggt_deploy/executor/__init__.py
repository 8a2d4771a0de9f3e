"""Where the analysis commands run their units of work: in this process, or on a Ray cluster.

`sensitivity`, `plan auto`, the ablation scripts and sharded `eval` cut their
work into tasks (one plan variant: quantize from the shared range cache,
score on the held-out data; or one shard of a large evaluation). An
`Executor` runs them:

- `LocalExecutor` (``--executor local``, the default): one after the other in
  this process;
- `vggt_deploy.executor.ray_executor.RayExecutor` (``--executor ray`` or
  ``ray:ADDRESS``): as Ray tasks, on a local Ray instance or a cluster.

Both go through the same `Executor.run`, so a result does not depend on where
it was computed. Finished tasks are kept in a `ResultCache` keyed by the
task's content hash: an interrupted analysis resumes from there, and a
variant is never recorded twice. Large inputs (the FP32 ONNX, the range
cache, the eval data) travel as `Shared` artifacts, addressed by content hash
and sent once per node rather than once per task. Latency is only measured
by timing tasks, which hold a whole node (see `TIMING_RESOURCE`).
"""

from vggt_deploy.executor.base import (
    EXECUTOR_HELP,
    TIMING_RESOURCE,
    Executor,
    LocalExecutor,
    Outcome,
    ResultCache,
    Task,
    check_executor,
    failed_summary,
    make_executor,
    task_key,
    task_threads,
)
from vggt_deploy.executor.shared import Shared

__all__ = ["EXECUTOR_HELP", "TIMING_RESOURCE", "Executor", "LocalExecutor", "Outcome", "ResultCache", "Shared",
           "Task", "check_executor", "failed_summary", "make_executor", "task_key",
           "task_threads"]
