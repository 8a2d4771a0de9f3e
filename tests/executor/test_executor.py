"""The in-process executor: result cache, failures, resuming an interrupted analysis, sharded eval."""

import itertools
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vggt_deploy.bench.sharded_eval import shard_ranges
from vggt_deploy.cli import main
from vggt_deploy.errors import UserError
from vggt_deploy.executor import LocalExecutor, ResultCache, Shared, Task, make_executor, task_key
from vggt_deploy.quant.plan import parse_plan
from vggt_deploy.tuning.sensitivity import SensitivityConfig, run_sensitivity
from vggt_deploy.tuning.variants import Workbench

BASE = """\
version: 1
target: onnxruntime-cpu
calibration: {method: minmax, images: calib_data, num_images: 6}
default: {precision: int8, weight_granularity: per-channel, activations: static}
"""


def _tasks(texts):
    # json.loads is a real module-level function: a bad text is a real failure inside the task.
    return [Task(task_key("parse", t), f"parse {t}", json.loads, (t,)) for t in texts]


def test_cached_results_are_reused_and_failures_are_reported_not_fatal(tmp_path):
    cache = ResultCache(tmp_path / "results")
    tasks = _tasks(["[1, 2]", "{not json", '{"a": 3}', "[1, 2]"])  # the duplicate runs once
    first = LocalExecutor(cache)
    out = first.run(tasks, progress=False)
    assert len(out) == 3 and first.counts == {"cached": 0, "ran": 2, "failed": 1}
    bad = out[tasks[1].key]
    assert not bad.ok and bad.error.startswith("JSONDecodeError") and "line 1" in bad.error
    assert out[tasks[2].key].value == {"a": 3}
    assert cache.keys() == {tasks[0].key, tasks[2].key}  # only successes are recorded

    again = LocalExecutor(cache)
    out2 = again.run(tasks, progress=False)
    assert again.counts == {"cached": 2, "ran": 0, "failed": 1}
    assert out2[tasks[0].key].cached and out2[tasks[0].key].value == [1, 2]


def test_timing_tasks_are_never_cached(tmp_path):
    cache = ResultCache(tmp_path / "results")
    task = Task(task_key("t"), "timing", json.loads, ("[0]",), timing=True)
    ex = LocalExecutor(cache)
    ex.run([task], progress=False)
    ex.run([task], progress=False)
    assert ex.counts["ran"] == 2 and cache.keys() == set()


def test_unreadable_cache_entry_is_run_again(tmp_path):
    cache = ResultCache(tmp_path / "results")
    [task] = _tasks(["[7]"])
    cache.folder.mkdir()
    (cache.folder / f"{task.key}.json").write_text('{"key": "half-writ')
    ex = LocalExecutor(cache)
    assert ex.run([task], progress=False)[task.key].value == [7]
    assert ex.counts["ran"] == 1


def test_executor_spec_errors_name_the_fix(monkeypatch):
    with pytest.raises(UserError, match="expected local, ray or ray:ADDRESS"):
        make_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r"pip install 'vggt-deploy\[ray\]'"):
        make_executor("ray")


def test_shared_folder_digest_follows_content_not_path(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "x.txt").write_text("same")
    assert Shared.of(tmp_path / "a").digest == Shared.of(tmp_path / "b").digest
    (tmp_path / "b" / "sub" / "x.txt").write_text("other")
    assert Shared.of(tmp_path / "a").digest != Shared.of(tmp_path / "b").digest
    with pytest.raises(UserError, match="not found"):
        Shared.of(tmp_path / "missing")


def test_shards_are_whole_batches_and_cover_every_record():
    for n, shard, batch in [(8, 3, 2), (1000, 256, 16), (5, 100, 4), (7, 1, 3)]:
        ranges = shard_ranges(n, shard, batch)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(start % batch == 0 for start, _ in ranges)


class _Interrupted(LocalExecutor):
    """Ctrl-C after `after` finished tasks, as a user stopping a long analysis."""

    def __init__(self, results, after):
        super().__init__(results)
        self.after = after

    def _execute(self, tasks):
        for i, outcome in enumerate(super()._execute(tasks)):
            if i == self.after:
                raise KeyboardInterrupt
            yield outcome


def test_interrupted_sensitivity_resumes_without_redoing_finished_variants(tiny_model_dir, tiny_data, tmp_path):
    bench = Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml"), tmp_path / "work", data_dir=tiny_data,
                      cache_dir=tmp_path / "cache")
    cfg = SensitivityConfig(metric="map", images=8, confirm_top=1, latency_rounds=0)
    reference = run_sensitivity(bench, cfg, progress=False).to_json()
    cache = ResultCache(tmp_path / "results")
    with pytest.raises(KeyboardInterrupt):
        run_sensitivity(bench, cfg, progress=False, executor=_Interrupted(cache, after=5))
    finished = {p.name: p.stat().st_mtime_ns for p in cache.folder.glob("*.json")}
    assert len(finished) == 5
    resumed = LocalExecutor(cache)
    result = run_sensitivity(bench, cfg, progress=False, executor=resumed).to_json()
    variants = 2 + 2 * len(bench.units)
    # The confirmation re-scores 4 variants on the full set (different tasks: another image count).
    assert resumed.counts == {"cached": 5, "ran": variants - 5 + 4, "failed": 0}
    assert {p.name: p.stat().st_mtime_ns for p in cache.folder.glob("*.json") if p.name in finished} == finished
    assert result.pop("execution")["tasks"] == resumed.counts
    reference.pop("execution")
    assert result == reference


def test_sharded_eval_equals_the_whole_run(tiny_export, tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VGGT_DEPLOY_CACHE", str(tmp_path / "cache"))
    base = ["eval", "--model", str(tiny_model_dir), "--onnx", str(tiny_export.fp32), "--data", str(tiny_data),
            "--batch-size", "2", "--json"]
    whole = CliRunner().invoke(main, base)
    sharded = CliRunner().invoke(main, base + ["--shard-images", "3"])
    assert whole.exit_code == 0, whole.output
    assert sharded.exit_code == 0, sharded.output
    a, b = json.loads(whole.output), json.loads(sharded.output)
    assert a == b and a["num_images"] == 8 and not np.isnan(a["map"])
    assert len(list((tmp_path / "cache" / "eval_shards").glob("*.json"))) == 2  # 4-image shards, cached
