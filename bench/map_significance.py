"""Are the mAP gaps between the shipped plan, the nncf-ov peer and FP32 real, or image-sampling noise?

Issue 11 asks ov-mixed for mAP >= the fastest peer's (nncf-ov). On the bench's 1000-image split the two
differ by less than the float rounding of one file moves it (the same QDQ file scores 0.8264 on ONNX
Runtime and 0.8255 on OpenVINO), so one number per target cannot settle it. This script scores every
variant on 4000 eval images (the bench's 1000 and the 3000 held out after them), cuts them into 40 shards
of 100 and compares pairs of variants shard by shard (`vggt_deploy.bench.map_stats`): the mean per-shard
difference and its 95% t interval. Two rows are controls whose true difference is zero in principle:
the FP32 graph in OpenVINO bf16 against FP32 on ONNX Runtime, and the same QDQ file on OpenVINO against
ONNX Runtime; their intervals show how wide rounding alone makes a gap look.

    python bench/map_significance.py     -> bench/results/map_significance.{json,md}
"""

from __future__ import annotations

from pathlib import Path

from vggt_deploy.backends.onnxruntime.runner import OrtRunner
from vggt_deploy.backends.openvino.runner import OvRunner
from vggt_deploy.bench.evaluate import evaluate, runner_infer
from vggt_deploy.bench.map_stats import paired_difference, shard_maps
from vggt_deploy.bench.targets import TARGETS, BenchConfig, Builds
from vggt_deploy.data.coco import load_coco, synthetic_split
from vggt_deploy.model.io import load_model
from vggt_deploy.paths import default_model_dir
from vggt_deploy.tuning.ablations import write_table

ROOT = Path(__file__).resolve().parents[1]
BENCH_BUILD = ROOT / "build" / "bench"  # `vggt-deploy bench`'s folder: its cached peer and exports are reused
IMAGES = 4000  # eval images 0..3999: the bench's reporting split (0..999) and plan_validation's held-out set
REPORTED = 1000
SHARD = 100

# (a, b): the rows of the table, each a - b
PAIRS = (
    ("ov-mixed", "nncf-ov"),
    ("ov-mixed", "fp32"),
    ("nncf-ov", "fp32"),
    ("ov-bf16", "fp32"),
    ("ov-mixed", "ort-mixed"),
)
LABELS = {
    "fp32": "FP32 on ONNX Runtime (the reference)",
    "ov-bf16": "FP32 graph, OpenVINO bf16",
    "ov-mixed": "shipped mixed, OpenVINO",
    "ort-mixed": "shipped mixed (the same file), ONNX Runtime",
    "nncf-ov": "nncf-ov peer, OpenVINO",
}


def main() -> None:
    model = default_model_dir()
    loaded = load_model(model)
    dataset = load_coco(synthetic_split("eval", IMAGES))
    builds = Builds(BenchConfig(model_dir=model, build_dir=BENCH_BUILD))
    nncf_runner, nncf = TARGETS["nncf-ov"].build(builds, builds.cfg)
    nncf_runner.close()
    fp32, mixed = builds.export(None), builds.export("mixed")
    files = {"fp32": (OrtRunner, fp32), "ov-bf16": (OvRunner, fp32), "ov-mixed": (OvRunner, mixed),
             "ort-mixed": (OrtRunner, mixed), "nncf-ov": (OvRunner, nncf)}
    whole, reported, shards = {}, {}, {}
    for name, (runner_cls, path) in files.items():
        with runner_cls(path, name=name) as runner:
            metrics = evaluate(loaded, dataset, infer=runner_infer(runner), batch_size=16, progress=False)
        dets = metrics["detections"]
        whole[name] = float(metrics["map"])
        reported[name] = float(shard_maps(dataset.records[:REPORTED], dataset.categories, dets, REPORTED)[0])
        shards[name] = shard_maps(dataset.records, dataset.categories, dets, SHARD)
        print(f"{name}: mAP {whole[name]:.4f} on {IMAGES} images, {reported[name]:.4f} on the first {REPORTED}",
              flush=True)
    rows = []
    for a, b in PAIRS:
        d = paired_difference(shards[a], shards[b], SHARD)
        rows.append({"a": LABELS[a], "b": LABELS[b], "a_target": a, "b_target": b, "map_a": whole[a], "map_b": whole[b],
                     "whole_diff_points": 100 * (whole[a] - whole[b]),
                     "reported_diff_points": 100 * (reported[a] - reported[b]),
                     "shard_diff_points": 100 * d.mean, "ci_low_points": 100 * d.low, "ci_high_points": 100 * d.high,
                     "images": IMAGES, "shards": d.shards, "verdict": d.verdict})
    write_table("map_significance", rows, [
        ("a", "a"), ("b", "b"), ("map_a", f"mAP a ({IMAGES})"), ("map_b", f"mAP b ({IMAGES})"),
        ("reported_diff_points", f"a - b, first {REPORTED} (points)"),
        ("whole_diff_points", f"a - b, {IMAGES} (points)"),
        ("shard_diff_points", "mean shard a - b (points)"), ("ci_low_points", "95% low"),
        ("ci_high_points", "95% high"), ("verdict", "verdict")],
        note=f"Synthetic eval images 0-{IMAGES - 1}: the bench's reporting split (the first {REPORTED}) and the "
             f"{IMAGES - REPORTED} held-out images after it. {IMAGES // SHARD} shards of {SHARD} consecutive "
             "images, each scored by pycocotools for both variants; the interval is a Student-t 95% interval of "
             "the mean per-shard difference (batch means). 'no difference': the interval contains 0. The last "
             "two rows are controls (float rounding only: the same graph or the same file on two runtimes).",
        results=ROOT / "bench" / "results")


if __name__ == "__main__":
    main()
