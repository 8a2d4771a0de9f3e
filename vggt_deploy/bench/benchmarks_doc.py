"""BENCHMARKS.md, rendered from the files in a results folder and nothing else.

The document sits beside its results folder (`bench/BENCHMARKS.md` for
`bench/results/`, `build/demo/BENCHMARKS.md` for `build/demo/results/`). Tables
come from the Markdown the tools wrote, the reading notes are generated from
their JSON (`benchmarks_notes`), and a section whose file is missing is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from vggt_deploy.bench.benchmarks_notes import Results, analysis_section, numbers_section
from vggt_deploy.bench.report import markdown_table
from vggt_deploy.errors import UserError
from vggt_deploy.fileio import atomic_write_bytes, atomic_write_text

RESULT_SUFFIXES = (".json", ".md", ".csv", ".png", ".yaml")  # what a results folder holds
GPU_PREFIXES = ("trt-",)  # targets that run on the GPU (the harness's TensorRT targets)

# (file stem, heading, reproduce command); a section appears when its Markdown file exists.
ANALYSIS_SECTIONS = [
    ("plan_candidates", "## Plans tuned on OpenVINO: candidates for the shipped mixed plan", "python bench/plan_candidates.py"),
    ("plan_validation", "## The shipped plan's close calls, on held-out images", "python bench/plan_validation.py"),
    ("map_significance", "## Are the mAP gaps real? Paired shard comparison on 4000 images",
     "python bench/map_significance.py"),
    ("outlier_models", "## Real-model activation statistics: outlier ViTs, calibration methods and references",
     "python bench/outlier_models.py"),
    ("qat", "## PTQ vs QAT (quantization-aware training with the same plan)", "python bench/qat_table.py"),
    ("sensitivity", "## Sensitivity: which units to keep in higher precision", "vggt-deploy sensitivity -o bench/results"),
    ("auto_plan", "## Automatic plan under an accuracy budget (plan: {results}/auto_plan.yaml)", None),
    ("ablation_granularity", "## Ablation (a): weight granularity per stage", "python bench/ablations/granularity.py"),
    ("ablation_calibration", "## Ablation (b): calibration method and number of images",
     "python bench/ablations/calibration.py"),
    ("ablation_grounding", "## Ablation (c, d): number and placement of grounding tokens",
     "python bench/ablations/grounding_tokens.py train && python bench/ablations/grounding_tokens.py report"),
    ("limitations_size", "## Limitation: small objects", "python bench/ablations/limitations.py"),
    ("limitations_domain", "## Limitation: domain shift and recalibration", "python bench/ablations/limitations.py"),
    ("vggt1b", "## Meta's VGGT-1B at full size on this CPU: FP32, bf16 and int8 (random weights)",
     "vggt-deploy export-vggt1b --image-size 224 --plan vggt1b-int8 -o build/vggt1b_224 && "
     "python bench/vggt1b_bench.py --export build/vggt1b_224"),
    ("vggt1b_518x294", "## Meta's VGGT-1B at 518 x 294 (random weights)",
     "vggt-deploy export-vggt1b --image-size 518x294 --plan vggt1b-int8 -o build/vggt1b_518x294 && "
     "python bench/vggt1b_bench.py --export build/vggt1b_518x294 --stem vggt1b_518x294"),
]


def load_results(results_dir: Path) -> Results:
    """Every JSON file of the results folder, by stem."""
    out = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return out


def gpu_reason(bench: dict) -> str | None:
    """Why the run has no GPU latency, from its environment and settings; None when it has GPU targets."""
    if any(r["name"].startswith(GPU_PREFIXES) for r in bench["targets"]):
        return None
    env, profile = bench.get("environment", {}), bench.get("settings", {}).get("device", "cpu")
    gpu = env.get("gpu") or ("Jetson" if env.get("jetson") else None)
    if gpu is None:
        return f"no CUDA device in this run ({profile} profile)"
    if profile == "cpu":
        return f"the run used the cpu profile ({gpu} present; `--device cuda` adds the TensorRT targets)"
    return f"no TensorRT target selected in this run ({profile} profile, {gpu})"


def _variants(bench: dict) -> list[str]:
    batch = bench["settings"]["batch"]
    reason = gpu_reason(bench)
    gpu_head = "GPU latency" if reason else f"GPU latency p50 ms (batch {batch})"
    lines = ["## Variants (the seed's reporting table)", "",
             (f"| variant | top-1 / top-5 | grounding mAP@[.5:.95] (mAP@.5) | RefExp acc | size MB | GFLOPs | "
              f"CPU latency p50 ms (batch {batch}) | {gpu_head} |"), "|---|---|---|---|---|---|---|---|"]
    for r in bench["targets"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | failed: {r['reason']} | | | | | | |")
            continue
        p50 = f"{r['latency_ms']['p50']:.2f}"
        on_gpu = r["name"].startswith(GPU_PREFIXES)
        gpu = p50 if on_gpu else f"not measured: {reason}" if reason else "- (CPU target)"
        cpu = "- (GPU target)" if on_gpu else p50
        lines.append(f"| {r['name']} | {_num(r.get('top1'), 3)} / {_num(r.get('top5'), 3)} | {_num(r.get('map'), 4)} "
                     f"({_num(r.get('map50'), 4)}) | {_num(r.get('refexp_acc'), 4)} | {_num(r.get('size_mb'), 2)} | "
                     f"{_num(r.get('gflops'), 3)} | {cpu} | {gpu} |")
    return lines


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _main_table(bench: dict, results: str) -> list[str]:
    peak = bench.get("matmul_peak_gops", {})
    return [*_variants(bench), "",
            "Full table (p90/p99, FPS, memory, achieved GOPS and fraction of this CPU's MatMul peak):", "",
            markdown_table(bench["targets"]), "",
            "MatMul peak measured in the same run: " + ", ".join(f"{k} {v:.1f} GOPS" for k, v in peak.items()) + ".", "",
            f"![latency vs mAP]({results}/bench_latency_vs_map.png) ![size vs mAP]({results}/bench_size_vs_map.png)", "",
            "Reproduce: `" + bench["settings"].get("command", "vggt-deploy bench") + "`", "",
            "### Environment", "", "```", json.dumps(bench["environment"], indent=1), "```", ""]


def _gpu_torch(data) -> list[str]:
    """bench/results/gpu_torch.json: rows of {name, device, p50_ms, dtype} from a GPU check."""
    rows = data["rows"] if isinstance(data, dict) else data
    devices = sorted({str(r.get("device", "?")) for r in rows})
    lines = [f"## GPU check: PyTorch on {', '.join(devices)}", "", "| name | dtype | p50 ms | device |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r.get('dtype', '-')} | {_num(r.get('p50_ms'), 3)} | {r.get('device', '-')} |" for r in rows]
    if isinstance(data, dict) and data.get("command"):
        lines += ["", f"Reproduce: `{data['command']}`"]
    return lines + [""]


def _reproduce(stem: str, default: str | None, res: Results, results: str) -> str | None:
    data = res.get(stem, {})
    if stem == "sensitivity" and data.get("command"):
        return data["command"]
    if stem == "auto_plan" and "budget_points" in data:
        return (f"vggt-deploy plan auto --max-map-drop {data['budget_points'] / 100:g} --objective "
                f"{data.get('objective', 'latency')} -o {data.get('output', results + '/auto_plan.yaml')}")
    return default


def _analysis_tables(results_dir: Path, res: Results) -> list[str]:
    parts, results = [], results_dir.name
    for stem, heading, command in ANALYSIS_SECTIONS:
        md = results_dir / f"{stem}.md"
        if not md.is_file():
            continue
        parts += [heading.format(results=results), "", md.read_text().strip(), ""]
        if (results_dir / f"{stem}.png").is_file():
            parts += [f"![{stem}]({results}/{stem}.png)", ""]
        command = _reproduce(stem, command, res, f"bench/{results}")
        if command:
            parts += [f"Reproduce: `{command}`", ""]
    return parts


def render_benchmarks(results_dir: Path, out_path: Path) -> Path:
    """`out_path` (BENCHMARKS.md) from whatever result files exist in `results_dir`."""
    res = load_results(results_dir)
    results = results_dir.name
    parts = ["# Benchmarks", "",
             f"Rendered by `vggt-deploy bench` from the files in `{results}/` beside this file: every table and every",
             "number in the notes is read or computed from them, on the machine described under Environment.",
             "Medians of alternating timed rounds (each round runs every target in a burst: one untimed call that "
             "re-wakes its runtime's threads, then timed calls); ratios only between rows of one run.", ""]
    parts += numbers_section(res, results_dir)
    parts += analysis_section(res)
    if "bench" in res:
        parts += _main_table(res["bench"], results)
    if "gpu_torch" in res:
        parts += _gpu_torch(res["gpu_torch"])
    quant = results_dir / "quant_accuracy.md"
    if quant.is_file():
        parts += ["## Quantization accuracy (ONNX Runtime, eval split)", "", quant.read_text().strip(), "",
                  "Reproduce: `python bench/quant_accuracy.py`", ""]
    for kind in ("batch", "resolution"):
        path = results_dir / f"sweep_{kind}.md"
        if path.is_file():
            parts += [f"## Scaling with {kind}", "", path.read_text().strip(), "",
                      f"Reproduce: `vggt-deploy bench --sweep {kind}`", ""]
    parts += _analysis_tables(results_dir, res)
    atomic_write_text(out_path, "\n".join(parts) + "\n")
    return out_path


def publish_results(src: Path, dst: Path) -> tuple[list[Path], Path]:
    """Copy the result files of `src` into `dst` (same names, overwritten) and re-render `dst`'s BENCHMARKS.md.

    Files only in `dst` (say, a sensitivity run published earlier) stay. Returns the copied files and the document.
    """
    if not src.is_dir():
        raise UserError(f"{src}: no such results folder (run `vggt-deploy bench --results-dir {src}` first)")
    if src.resolve() == dst.resolve():
        raise UserError(f"--from and --to are the same folder ({src}); nothing to publish")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in RESULT_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{src}: no result files ({', '.join(RESULT_SUFFIXES)}) to publish")
    copied = [atomic_write_bytes(dst / p.name, p.read_bytes()) for p in files]
    return copied, render_benchmarks(dst, dst.parent / "BENCHMARKS.md")
