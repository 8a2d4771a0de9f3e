"""The reading notes of BENCHMARKS.md, generated from the results files.

Every sentence that quotes a number computes it here from the JSON the tools
wrote (bench.json, quant_accuracy.json, sweep_*.json, sensitivity.json,
auto_plan.json, ablation_*.json, limitations_*.json), so the notes cannot
disagree with the tables beside them. Text that quotes no number (why a
speed-up is modest, what a calibrator does) is kept as constants. A bullet
whose file is missing, or lacks a field it needs, is left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from vggt_deploy.bench.speed_bars import bars_sentence, peer_gap_sentence, profile_sentence
from vggt_deploy.quant.plan_targets import KEPT_FLOAT

Results = dict[str, dict]  # file stem -> parsed JSON

WHY_MODEST = ("each MatMul of this small model is small, so quantize/dequantize and the float ops around it "
              "(LayerNorm, softmax, the per-head q/k norms) weigh as much as the int8 GEMMs")
ATTENTION_UNFUSED = ("its Attention fusion looks for Q·Kᵀ, scale, an optional mask and softmax straight after "
                     "the projections, while this model normalises Q and K per head (a LayerNorm over each head) "
                     "and adds the grounding tokens' spatial-prior bias before softmax, so attention runs as "
                     "separate MatMul, Softmax and elementwise kernels on ONNX Runtime (OpenVINO fuses them into its "
                     "own subgraphs)")
ENTROPY_NOTE = ("ONNX Runtime's `quantize_static` cannot set its entropy calibrator's bin counts and its defaults "
                "make \"entropy\" identical to minmax, so vggt-deploy computes entropy ranges itself with a finer "
                "histogram (as TensorRT's calibrator does)")
MAPS_CAPTION = ("Grounding maps (`vggt-deploy maps`, first eval scene): for each query, the answering token's "
                "cross-attention at the last grounding layer; dotted: the token's reference box (its geometric "
                "prior), white: its predicted box.")
ISA_NAMES = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
             ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimddp", "NEON dot product"), ("asimd", "NEON"))


def _loss(points: float, unit: str = "points") -> str:
    return f"loses {points:.2f} {unit}" if points >= 0 else f"gains {-points:.2f} {unit}"


def _faster(ratio: float) -> str:
    return f"{ratio:.2f}x faster than" if ratio >= 1 else f"{1 / ratio:.2f}x slower than"


def _smaller(ratio: float) -> str:
    return f"{ratio:.1f}x smaller than" if ratio >= 1 else f"{1 / ratio:.1f}x larger than"


def _span(values, fmt: str = "{:.2f}") -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _ok(bench: dict) -> dict[str, dict]:
    return {r["name"]: r for r in bench["targets"] if r["status"] == "ok"}


def _p50(row: dict) -> float:
    return row["latency_ms"]["p50"]


def _find(rows: list[dict], prefix: str, without: str | None = None, **fields) -> dict:
    """The first row whose variant starts with `prefix` (and lacks `without`) and whose fields match."""
    found = _maybe(rows, prefix, without, **fields)
    if found is None:
        raise KeyError(prefix)
    return found


def _maybe(rows: list[dict], prefix: str, without: str | None = None, **fields) -> dict | None:
    return next((r for r in rows if r["variant"].startswith(prefix) and (without is None or without not in r["variant"])
                 and all(r.get(k) == v for k, v in fields.items())), None)


def machine(env: dict) -> str:
    """'2-core AMD EPYC, AVX-512 VNNI, ONNX Runtime 1.32.0' from a run's environment snapshot."""
    isa = next((name for flag, name in ISA_NAMES if flag in env.get("cpu_flags", [])), None)
    cpu = env.get("cpu") or env.get("machine") or "CPU"
    parts = [f"{env['cores']}-core {cpu}" if env.get("cores") else cpu, isa,
             f"ONNX Runtime {env['onnxruntime']}" if env.get("onnxruntime") else None]
    return ", ".join(p for p in parts if p)


# ---- Reading the numbers: bench.json, quant_accuracy.json, sweeps ----

def _openvino(res: Results) -> str:
    gap = peer_gap_sentence(res["map_significance"]) if "map_significance" in res else None
    return bars_sentence(res["bench"]) + (f" {gap}" if gap else "")


def _ov_profile(res: Results) -> str:
    return profile_sentence(res["ov_profile"])


def _shipped(res: Results) -> str:
    b = res["bench"]
    rows = _ok(b)
    fp32, mixed = rows["ort-fp32"], rows["ort-mixed"]
    text = (f"**The shipped mixed plan (ort-mixed)** runs {_faster(_p50(fp32) / _p50(mixed))} ort-fp32 at batch "
            f"{b['settings']['batch']} ({_p50(mixed):.2f} vs {_p50(fp32):.2f} ms) and is "
            f"{_smaller(fp32['size_mb'] / mixed['size_mb'])} it ({mixed['size_mb']:.1f} vs {fp32['size_mb']:.1f} MB); "
            f"it {_loss((fp32['map'] - mixed['map']) * 100, 'mAP points')} ({mixed['map']:.4f} vs {fp32['map']:.4f}).")
    if "mixed.yaml" in mixed.get("description", ""):
        text += " It keeps the grounding cross-attention, the heads and the attention matmuls in float."
    return text


def _accuracy(res: Results) -> str:
    rows = _ok(res["bench"])
    clauses = []
    for name, r in rows.items():
        ref = rows.get("torch-fp32" if name.startswith("torch-") else "ort-fp32")
        if name in ("ort-fp32", "torch-fp32", "ort-mixed") or ref is None or r.get("map") is None:
            continue
        clause = f"{name} {_loss((ref['map'] - r['map']) * 100)} of mAP against {ref['name']}"
        refexp = (ref["refexp_acc"] - r["refexp_acc"]) * 100
        clause += f" and {_loss(refexp)} of RefExp accuracy" if round(refexp, 2) else " (RefExp accuracy unchanged)"
        clauses.append(clause)
    if not clauses:
        raise KeyError("no quantized target")
    return "Accuracy: " + "; ".join(clauses) + "."


def _flavours(res: Results) -> str:
    qa = res["quant_accuracy"]["rows"]
    mixed = [r for r in qa if r["variant"].startswith("mixed (")]
    return (f"In the quantization-accuracy run ({qa[0]['num_images']} eval images) the mixed plan's flavours stay "
            f"within {max(abs(r['map_drop_points']) for r in mixed):.2f} mAP points of FP32: "
            + "; ".join(f"{r['variant']} {_loss(r['map_drop_points'])}" for r in mixed) + ".")


def _size(res: Results) -> str:
    rows = _ok(res["bench"])
    fp32, int8 = rows["ort-fp32"], rows["ort-int8"]
    return (f"Size: uniform int8 (ort-int8) is {_smaller(fp32['size_mb'] / int8['size_mb'])} ort-fp32 "
            f"({int8['size_mb']:.1f} vs {fp32['size_mb']:.1f} MB).")


def _speed(res: Results) -> str:
    b = res["bench"]
    rows = _ok(b)
    fp32 = rows["ort-fp32"]
    own = [r for n, r in rows.items() if not any(f in n for f in ("fp32", "fp16", "bf16"))
           and "peer" not in r.get("description", "") and r.get("peak_fraction") is not None]
    speeds = ", ".join(f"{r['name']} {_p50(fp32) / _p50(r):.2f}x" for r in own)
    names = ", ".join(r["name"] for r in own)
    return (f"Speed at batch {b['settings']['batch']} over ort-fp32: {speeds}. Over the float baseline of the same "
            f"runtime the int8 gain is modest because {WHY_MODEST}; "
            f"the quantized targets ({names}) reach {_span([r['peak_fraction'] * 100 for r in own], '{:.0f}')}% of this CPU's "
            f"int8 MatMul peak ({b['matmul_peak_gops']['int8']:.0f} GOPS, measured in the same run).")


def _sweep_ratios(sweep: dict, key: str) -> tuple[str, dict]:
    rows = sweep["rows"]
    targets = [r["target"] for r in rows if r["target"] != "ort-fp32"]
    other = "ov-mixed" if "ov-mixed" in targets else targets[0]  # the shipped plan on the fastest CPU runtime
    p50 = {(r[key], r["target"]): r["p50_ms"] for r in rows}
    ratios = {k: p50[(k, "ort-fp32")] / p50[(k, other)] for k, t in p50 if t == other and (k, "ort-fp32") in p50}
    return other, dict(sorted(ratios.items()))


def _sweeps(res: Results) -> str:
    clauses, grows = [], []
    for stem, key, label in (("sweep_batch", "batch", "batch {}"), ("sweep_resolution", "tokens", "{} tokens")):
        if stem not in res:
            continue
        target, ratios = _sweep_ratios(res[stem], key)
        (first, r0), (last, r1) = next(iter(ratios.items())), list(ratios.items())[-1]
        grows.append(r1 > r0)
        clauses.append(f"in the {stem.split('_')[1]} sweep {target} goes from {r0:.2f}x ort-fp32's speed at "
                       f"{label.format(first)} to {r1:.2f}x at {label.format(last)}")
    if not clauses:
        raise KeyError("no sweep")
    lead = "The gain grows with work per call" if all(grows) else "The gain does not grow with work per call"
    return f"{lead}: " + "; ".join(clauses) + "."


def _dynamic(res: Results) -> str:
    qa = res["quant_accuracy"]["rows"]
    dyn, static = _find(qa, "mixed-dynamic"), _find(qa, "mixed (ORT")
    text = (f"Not the default: dynamic activation quantization (`--plan mixed-dynamic`) runs at "
            f"{dyn['speedup_vs_fp32']:.2f}x FP32's speed against {static['speedup_vs_fp32']:.2f}x for the static "
            f"mixed plan in the same run, and {_loss(dyn['map_drop_points'])} of mAP.")
    trt = [r for r in qa if "TensorRT" in r["variant"]]
    if trt:
        text += (f" The {trt[0]['variant']} model is built for TensorRT; on ONNX Runtime's CPU it runs at "
                 f"{trt[0]['speedup_vs_fp32']:.2f}x FP32's speed.")
    return text


# ---- Reading the analysis: sensitivity, plan auto, ablations, limitations ----

def _sensitivity(res: Results) -> str:
    s = res["sensitivity"]
    units, conf, unit = s["units"], s.get("confirmation") or {}, s["damage_unit"]
    top = units[0]
    if conf.get("damage_all") is not None and top.get("full_damage_only") is not None:
        only, total, keep = top["full_damage_only"], conf["damage_all"], top["full_damage_except"]
        where = f"the full eval split ({conf['images']} images)"
    else:
        only, total, keep = top["damage_only"], s["damage_all"], top["damage_except"]
        where = f"the {s['subset_images']}-image subset"
    recovered = total - keep
    lead = (f"**One unit decides the accuracy: {top['unit']}.**" if recovered >= total / 2
            else f"**The most sensitive unit is {top['unit']}.**")
    text = (f"{lead} Quantizing it alone costs {only:.2f} {unit} on {where}; keeping only it float recovers "
            f"{recovered:.2f} of the {total:.2f} {unit} that quantizing everything loses.")
    if len(units) > 1:
        second = units[1]
        text += (f" Every other unit moves the score by at most {max(abs(u['damage_only']) for u in units[1:]):.2f} "
                 f"{unit} on its own on the {s['subset_images']}-image subset; {second['unit']} comes second "
                 f"({second['recovery']:.2f} {unit} recovered when only it stays float).")
    if conf.get("top_units_full_order"):
        same = conf["top_units_full_order"] == conf["top_units_subset_order"]
        text += (f" The top {len(conf['top_units_full_order'])} are {'the same' if same else 'ordered differently'} "
                 "on the subset and on the full split.")
    return text + f" ({len(s['scores'])} variants, {len(units)} units.)"


def _unit_latency(res: Results) -> str:
    s = res["sensitivity"]
    saving = {u["unit"]: u["latency_saving_ms"] for u in s["units"]}
    blocks = [v for k, v in saving.items() if k.startswith("blocks.")] or [v for v in saving.values() if v > 0]
    runtime = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}.get(s.get("runtime", "onnxruntime"), "the runtime")
    floats = KEPT_FLOAT.get(s.get("target"), "fp32").replace("fp32", "FP32")  # what the units kept float run in
    text = (f"**Per-unit latency savings are small and noisy** ({_span(blocks)} ms per backbone block on a "
            f"{s['latency_ms']['fp32']:.1f} ms {floats} model, timed in {runtime}")
    if s.get("latency_noise_ms") is not None:
        text += f"; savings within the run's timing noise, {s['latency_noise_ms']:.2f} ms, count as zero"
    text += ")"
    slower = {k: v for k, v in saving.items() if v < 0}
    if slower:
        text += (f"; quantizing {' and '.join(slower)} makes {runtime} *slower* here ("
                 + ", ".join(f"{v:+.2f} ms" for v in slower.values()) + ")")
    return text + "."


def _auto(res: Results) -> str:
    a = res["auto_plan"]
    lat = a["latency_ms"]
    verdict = "met" if a["met"] else "not met"
    quality = "was optimistic" if a["predicted_points"] < a["drop_points"] else "held"
    return (f"**`plan auto --max-map-drop {a['budget_points'] / 100:g}`** keeps {', '.join(a['float'])} float and "
            f"quantizes the rest: measured drop {a['drop_points']:.2f} points (budget {a['budget_points']:.2f}, "
            f"{verdict}) and {lat['auto'] / lat['base']:.2f}x the latency of the base plan in the same run "
            f"({lat['auto']:.2f} vs {lat['base']:.2f} ms; nothing quantized {lat['fp32']:.2f} ms). The additive prediction from the "
            f"subset ({a['predicted_points']:.2f} points) {quality}; the plan is always verified on the full split "
            f"({a['eval_images']} images).")


def _granularity(res: Results) -> str:
    rows = res["ablation_granularity"]["rows"]
    best, worst = min(rows, key=lambda r: r["drop_points"]), max(rows, key=lambda r: r["drop_points"])
    text = (f"**Granularity (a)**: the {len(rows)} layouts land within {worst['drop_points'] - best['drop_points']:.2f} "
            f"points of each other: {best['variant']} is the most accurate ({_loss(best['drop_points'])}), "
            f"{worst['variant']} the least ({_loss(worst['drop_points'])}); all run at "
            f"{_span([r['fp32_p50_ms'] / r['p50_ms'] for r in rows])}x FP32's speed.")
    base, seed = _maybe(rows, "per-channel everywhere"), _maybe(rows, "per-channel early, per-tensor late")
    if base is None or seed is None:
        return text
    if seed["drop_points"] >= base["drop_points"]:
        text += (f" The seed's \"per-channel early, per-tensor late\" does not beat per-channel everywhere "
                 f"({seed['drop_points']:.2f} vs {base['drop_points']:.2f} points lost), so per-channel stays the default.")
    else:
        text += (f" The seed's \"per-channel early, per-tensor late\" beats per-channel everywhere "
                 f"({seed['drop_points']:.2f} vs {base['drop_points']:.2f} points lost).")
    return text


def _calibration(res: Results) -> str:
    rows = res["ablation_calibration"]["rows"]
    parsed = {}
    for r in rows:
        m = re.match(r"(\w+), (\d+) images", r["variant"])
        if m:
            parsed[(m.group(1), int(m.group(2)))] = r["drop_points"]
    best = min(parsed, key=parsed.get)
    counts = sorted(n for meth, n in parsed if meth == best[0])
    text = (f"**Calibration (b)**: the best setting is {best[0]} on {best[1]} images ({_loss(parsed[best])}); "
            f"{best[0]} by number of images: " + ", ".join(f"{n}: {parsed[(best[0], n)]:.2f}" for n in counts)
            + " points lost.")
    shared = max({n for _, n in parsed}, key=lambda n: sum(1 for _, k in parsed if k == n))
    methods = {meth: parsed[(meth, n)] for meth, n in parsed if n == shared}
    text += f" At {shared} images: " + ", ".join(f"{m} {_loss(d)}" for m, d in methods.items()) + "."
    hard = [m for m in ("entropy", "mse") if m in methods]
    if hard and all(methods[m] > max(v for k, v in methods.items() if k not in hard) for m in hard):
        text += f" {' and '.join(hard).capitalize()} clip too hard for these activations."
    return text + f" {ENTROPY_NOTE}."


def _grounding(res: Results) -> str:
    rows = res["ablation_grounding"]["rows"]
    cfg = {}  # (N, early|late) -> (row, "1, 2")
    for r in rows:
        m = re.match(r"N=(\d+), (early|late) \(([\d, ]+)\)", r["variant"])
        if m:
            cfg[(int(m.group(1)), m.group(2))] = (r, m.group(3))
    ns = sorted({n for n, _ in cfg})
    mean = {k: r["fp32_map"]["mean"] for k, (r, _) in cfg.items()}
    gaps = [(mean[(n, "early")] - mean[(n, "late")]) * 100 for n in ns if (n, "early") in mean and (n, "late") in mean]
    blocks = {place: next(b for (_, p), (_, b) in cfg.items() if p == place) for place in ("early", "late")}
    if all(g > 0 for g in gaps):
        verdict = f"beats late (after blocks {blocks['late']}) for every N"
    elif all(g < 0 for g in gaps):
        verdict = f"loses to late (after blocks {blocks['late']}) for every N"
    else:
        verdict = f"does not always beat late (after blocks {blocks['late']})"
    early = [(n, mean[(n, "early")]) for n in ns if (n, "early") in mean]
    trend = "more tokens help" if [m for _, m in early] == sorted(m for _, m in early) else "more tokens do not always help"
    best = sorted((r["fp32_map"]["mean"] for r in rows), reverse=True)
    return (f"**Grounding tokens (c, d)**, short schedule, {rows[0]['seeds']} seeds: placing the grounding layers early "
            f"(after blocks {blocks['early']}) {verdict} (early minus late: {_span(gaps)} points); with early placement "
            f"{trend} (" + ", ".join(f"N={n} {m:.3f}" for n, m in early) + "). The seed-to-seed spread "
            f"({_span([r['fp32_map']['std'] * 100 for r in rows])} points std) compares with the "
            f"{(best[0] - best[1]) * 100:.2f}-point gap between the two best configurations. INT8-mixed changes no "
            f"configuration by more than {max(abs(r['drop_points']['mean']) for r in rows):.2f} points. Absolute mAP is "
            f"low (best {best[0]:.3f}: a short schedule on the small ablation model), so only the ordering transfers.")


def _small_objects(res: Results) -> str:
    rows = res["limitations_size"]["rows"]
    int8 = _find(rows, "int8")
    small, large = int8["small_drop_points"], int8["large_drop_points"]
    lead = "do not suffer more than large ones" if small <= large else "suffer more than large ones"
    text = f"**Small objects (limitation 1)** {lead}: uniform int8 {_loss(small)} on small objects and {_loss(large)} on large ones"
    mixed = [r for r in rows if r["variant"].startswith("mixed")]
    if mixed:
        text += (f"; the mixed plan {_loss(mixed[0]['small_drop_points'])} on small and "
                 f"{_loss(mixed[0]['large_drop_points'])} on large ones")
    return text + "."


def _domain(res: Results) -> str:
    rows = res["limitations_domain"]["rows"]
    dom = _find(rows, "int8")["eval_domain"]
    shifted = _find(rows, "fp32", eval_domain=dom)
    ref = next(r for r in rows if r["variant"].startswith("fp32") and r["eval_domain"] != dom)
    int8 = _find(rows, "int8", without="recalibrated", eval_domain=dom)
    recal = _find(rows, "int8, recalibrated", eval_domain=dom)
    mixed = _find(rows, "mixed", without="recalibrated", eval_domain=dom)
    text = (f"**Domain shift (limitation 2)**: in the {dom} domain FP32 {_loss((ref['map'] - shifted['map']) * 100)}; "
            f"uniform int8 ({int8['variant'].split(', ', 1)[1]}) {_loss(int8['drop_points'])} more")
    size = {r["variant"]: r for r in res.get("limitations_size", {}).get("rows", [])}
    if "fp32" in size and "int8" in size:
        text += f" ({(size['fp32']['map'] - size['int8']['map']) * 100:.2f} in domain)"
    return (text + f", and recalibrating on {dom} recovers {int8['drop_points'] - recal['drop_points']:.2f} of that; "
            f"the mixed plan {_loss(mixed['drop_points'])} against FP32 on {dom}.")


def _ort_fusions(res: Results) -> str:
    f = res["ort_fusions"]
    fused = ", ".join(f"{op} x{n}" for op, n in f["fusions"].items()) or "nothing"
    return (f"ONNX Runtime {f['onnxruntime']}'s transformer fusions (`{f['command']}`) fuse {fused}, and "
            f"{f['attention_fused']} of the {f['attention_blocks_in_graph']} attention blocks: {ATTENTION_UNFUSED}.")


NUMBERS: list[Callable[[Results], str]] = [_openvino, _ov_profile, _shipped, _accuracy, _flavours, _size, _speed, _sweeps, _dynamic,
                                           _ort_fusions]
ANALYSIS: list[Callable[[Results], str]] = [_sensitivity, _unit_latency, _auto, _granularity, _calibration,
                                            _grounding, _small_objects, _domain]


def bullets(res: Results, builders: list[Callable[[Results], str]]) -> list[str]:
    """One Markdown bullet per builder whose inputs exist (a missing file or field leaves it out)."""
    out = []
    for build in builders:
        try:
            out.append(f"- {build(res)}")
        except (KeyError, IndexError, StopIteration, TypeError, ValueError, ZeroDivisionError):
            continue
    return out


def numbers_section(res: Results, results_dir: Path) -> list[str]:
    """'Reading the numbers' (main table, quantization accuracy, sweeps), with the grounding maps if present."""
    items = bullets(res, NUMBERS)
    if not items:
        return []
    env = res.get("bench", {}).get("environment")
    heading = "## Reading the numbers" + (f" ({machine(env)})" if env else "")
    parts = [heading, "", *items, ""]
    if (results_dir / "grounding_maps.png").is_file():
        parts += [f"![grounding maps]({results_dir.name}/grounding_maps.png)", "", MAPS_CAPTION, ""]
    return parts


def analysis_section(res: Results) -> list[str]:
    items = bullets(res, ANALYSIS)
    if not items:
        return []
    return ["## Reading the analysis: sensitivity, automatic plan, ablations, limitations", "", *items, ""]
