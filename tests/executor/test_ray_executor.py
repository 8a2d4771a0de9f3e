"""The Ray executor on a local Ray instance (ray.init(num_cpus=2)): same answers as in-process, faults survived."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggt_deploy.cli import main
from vggt_deploy.executor import TIMING_RESOURCE, ResultCache, Task, task_key
from vggt_deploy.executor.shared import store_dir
from vggt_deploy.quant.plan import parse_plan
from vggt_deploy.tuning.sensitivity import SensitivityConfig, run_sensitivity
from vggt_deploy.tuning.variants import Workbench

ray = pytest.importorskip("ray")  # in the dev extra: installed wherever `make test` runs
from vggt_deploy.executor.ray_executor import RayExecutor

BASE = """\
version: 1
target: onnxruntime-cpu
calibration: {method: minmax, images: calib_data, num_images: 6}
default: {precision: int8, weight_granularity: per-channel, activations: static}
"""
CFG = SensitivityConfig(metric="map", images=8, confirm_top=1, latency_rounds=0)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance whose workers keep their artifact store in a temporary cache folder."""
    cache = tmp_path_factory.mktemp("ray_cache")
    old = os.environ.get("VGGT_DEPLOY_CACHE")
    os.environ["VGGT_DEPLOY_CACHE"] = str(cache)  # workers inherit the environment of ray.init
    ray.init(num_cpus=2, resources={TIMING_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
    yield cache
    ray.shutdown()
    if old is None:
        os.environ.pop("VGGT_DEPLOY_CACHE", None)
    else:
        os.environ["VGGT_DEPLOY_CACHE"] = old


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("ray_sens")
    return Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml"), work, data_dir=tiny_data, cache_dir=work / "cache")


@pytest.fixture(scope="module")
def local_result(bench):
    result = run_sensitivity(bench, CFG, progress=False).to_json()
    result.pop("execution")
    return result


def test_ray_sensitivity_gives_the_local_ranking_damages_and_json(local_ray, bench, local_result):
    ex = RayExecutor()
    result = run_sensitivity(bench, CFG, progress=False, executor=ex).to_json()
    execution = result.pop("execution")
    assert execution["executor"] == "ray" and execution["tasks"]["ran"] == len(result["scores"]) + 4
    assert result == local_result
    # The workers built from shared artifacts in their own store, not from the driver's paths.
    assert (store_dir() / "work").is_dir() and any(store_dir().glob("*/*.onnx"))


def test_timing_runs_alone_on_a_bench_node_and_is_recorded(local_ray, bench):
    cfg = SensitivityConfig(metric="map", images=8, confirm_top=0, latency_rounds=2)
    result = run_sensitivity(bench, cfg, progress=False, executor=RayExecutor()).to_json()
    node = ray.get_runtime_context().get_node_id()
    assert result["execution"]["timed_on"].endswith(node[:12])
    assert result["execution"]["timing_node"] == node[:12]
    assert set(result["latency_ms"]) == set(result["scores"]) | {"fp32#repeat", "all#repeat"}
    assert all(v > 0 for v in result["latency_ms"].values())


def test_a_failing_task_is_reported_with_its_reason_and_the_others_finish(local_ray):
    texts = ["[1]", "{broken", "[3]"]
    tasks = [Task(task_key("parse", t), t, json.loads, (t,)) for t in texts]
    ex = RayExecutor()
    out = ex.run(tasks, progress=False)
    assert [out[t.key].ok for t in tasks] == [True, False, True]
    assert out[tasks[1].key].error.startswith("JSONDecodeError")
    assert out[tasks[2].key].value == [3]


def _task_workers() -> list[int]:
    """PIDs of Ray workers running one of our tasks (Ray titles them ray::<function>)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::call_task"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_worker_is_retried_and_every_variant_is_recorded_once(local_ray, tiny_model_dir, tiny_data, bench,
                                                                       tmp_path):
    # A fresh recipe (other units), so the workers have real work (loading the model) to be killed in.
    units = ["blocks.0", "blocks.1", "heads"]
    fresh = Workbench(tiny_model_dir, parse_plan(BASE, "base.yaml"), tmp_path / "work", units=units,
                      data_dir=tiny_data, cache_dir=tmp_path / "cache")
    reference = run_sensitivity(fresh, CFG, progress=False).to_json()
    reference.pop("execution")
    cache = ResultCache(tmp_path / "results")
    ex = RayExecutor(results=cache, max_retries=3)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=run_sensitivity(fresh, CFG, progress=False,
                                                                               executor=ex)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for pid in _task_workers():
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.02)
    thread.join(300)
    assert killed is not None, "no worker was caught running a task"
    result = out["result"].to_json()
    execution = result.pop("execution")
    assert result == reference
    unique = 2 + 2 * len(units) + 4  # subset variants + the confirmation's four
    assert execution["tasks"] == {"cached": 0, "ran": unique, "failed": 0}
    assert len(cache.keys()) == unique  # one record per variant: the retried one is not doubled
    # Run again: everything comes from the cache, nothing is redone.
    again = RayExecutor(results=cache)
    run_sensitivity(fresh, CFG, progress=False, executor=again)
    assert again.counts == {"cached": unique, "ran": 0, "failed": 0}


def test_sharded_eval_on_ray_gives_the_identical_map(local_ray, tiny_export, tiny_model_dir, tiny_data):
    base = ["eval", "--model", str(tiny_model_dir), "--onnx", str(tiny_export.fp32), "--data", str(tiny_data),
            "--batch-size", "2", "--json"]
    whole = CliRunner().invoke(main, base)
    sharded = CliRunner().invoke(main, base + ["--executor", "ray", "--shard-images", "2"])
    assert whole.exit_code == 0, whole.output
    assert sharded.exit_code == 0, sharded.output
    assert json.loads(whole.output) == json.loads(sharded.output)


def test_ablation_variants_on_ray_score_as_locally_and_time_on_the_bench_node(local_ray, tiny_model_dir, tiny_data,
                                                                              tiny_plan_text, tmp_path):
    from vggt_deploy.tuning.ablations import eval_variants

    variants = {"fp32": None, "mixed": tiny_plan_text}
    local = eval_variants(tiny_model_dir, variants, tmp_path / "local", data_dir=tiny_data, rounds=0)
    remote = eval_variants(tiny_model_dir, variants, tmp_path / "ray", data_dir=tiny_data, rounds=2,
                           executor=RayExecutor())
    assert {k: remote[k] for k in local} == local
    assert remote["timed_on"].endswith(ray.get_runtime_context().get_node_id()[:12])
    assert remote["fp32_p50_ms"] > 0 and remote["mixed_p50_ms"] > 0


def test_a_sweep_is_one_timing_task_on_the_bench_node(local_ray, tiny_model_dir, tiny_plan_text, tmp_path):
    from vggt_deploy.bench.sweep import BATCHES, run_sweep
    from vggt_deploy.bench.targets import BenchConfig

    plan = tmp_path / "tiny.yaml"
    plan.write_text(tiny_plan_text)
    cfg = BenchConfig(model_dir=tiny_model_dir, build_dir=tmp_path / "build", mixed_plan=plan, rounds=2, threads=1)
    rows, node = run_sweep("batch", cfg, RayExecutor())
    assert node.endswith(ray.get_runtime_context().get_node_id()[:12])
    assert sorted({r["batch"] for r in rows}) == list(BATCHES)
    assert all(r["p50_ms"] > 0 for r in rows)


def test_plan_auto_on_ray_chooses_and_verifies_the_same_plan(local_ray, bench, tmp_path):
    from vggt_deploy.tuning.auto_plan import AutoConfig, auto_plan

    cfg = AutoConfig(max_output_error=5.0, objective="size",
                     sensitivity=SensitivityConfig(metric="output-error", images=8, confirm_top=0, latency_rounds=0))
    local = auto_plan(bench, cfg, tmp_path / "local" / "plan.yaml", progress=False)
    remote = auto_plan(bench, cfg, tmp_path / "ray" / "plan.yaml", progress=False, executor=RayExecutor())
    assert remote["execution"]["executor"] == "ray"
    for key in ("met", "quantized", "float", "plan_output_error", "tried", "size_mb"):
        assert remote[key] == local[key], key
    plans = [parse_plan((tmp_path / where / "plan.yaml").read_text()) for where in ("local", "ray")]
    assert plans[0].rules == plans[1].rules  # the same plan; only the measured latencies in its comments differ
