"""The CPU speed bars of the shipped plan, computed from one bench run (bench.json).

The shipped plan on OpenVINO (`ov-mixed`) is compared, inside one run of alternating rounds,
with ONNX Runtime FP32, with the fastest float target (`ort-fp32`, `ov-fp32`, `ov-bf16`) and
with the fastest peer quantizer a user would otherwise pick (`nncf-ov`, `ort-quantize-static`,
`ort-quantize-dynamic`, `torch-int8-dynamic`); its mAP drop is against FP32 (`ort-fp32`) and
its size against the FP32 ONNX file. The same numbers feed BENCHMARKS.md and the closing notes
of a run, so they cannot disagree.
"""

from __future__ import annotations

FLOAT_TARGETS = ("ort-fp32", "ov-fp32", "ov-bf16")
PEERS = ("nncf-ov", "ort-quantize-static", "ort-quantize-dynamic", "torch-int8-dynamic")
SUBJECT = "ov-mixed"


def speed_bars(bench: dict, subject: str = SUBJECT) -> dict:
    """Ratios of `subject` against the reference targets present and ok in `bench` (missing ones omitted)."""
    rows = {r["name"]: r for r in bench["targets"] if r["status"] == "ok"}
    if subject not in rows or "ort-fp32" not in rows:
        raise KeyError(subject)
    me, fp32 = rows[subject], rows["ort-fp32"]
    p50 = {name: r["latency_ms"]["p50"] for name, r in rows.items()}
    out = {"subject": subject, "batch": bench["settings"]["batch"], "p50_ms": p50[subject],
           "vs_ort_fp32": p50["ort-fp32"] / p50[subject],
           "map_drop": fp32["map"] - me["map"], "smaller_than_fp32": fp32["size_mb"] / me["size_mb"]}
    floats = [n for n in FLOAT_TARGETS if n in rows]
    fastest_float = min(floats, key=p50.__getitem__)
    out.update(fastest_float=fastest_float, vs_fastest_float=p50[fastest_float] / p50[subject])
    peers = [n for n in PEERS if n in rows]
    if peers:
        peer = min(peers, key=p50.__getitem__)
        out.update(fastest_peer=peer, vs_fastest_peer=p50[peer] / p50[subject],
                   map_vs_peer=me["map"] - rows[peer]["map"])
    return out


def bars_sentence(bench: dict) -> str:
    """One sentence with every ratio, for BENCHMARKS.md."""
    b = speed_bars(bench)
    text = (f"**The shipped plan on OpenVINO ({b['subject']})** runs {b['vs_ort_fp32']:.2f}x faster than ort-fp32 "
            f"at batch {b['batch']} ({b['p50_ms']:.2f} ms), {b['vs_fastest_float']:.2f}x faster than the fastest "
            f"float target ({b['fastest_float']})")
    if "fastest_peer" in b:
        text += (f" and {b['vs_fastest_peer']:.2f}x faster than the fastest peer ({b['fastest_peer']}, whose mAP is "
                 f"{abs(b['map_vs_peer']) * 100:.2f} points {'lower' if b['map_vs_peer'] >= 0 else 'higher'})")
    drop = b["map_drop"] * 100
    change = f"loses {drop:.2f}" if drop >= 0 else f"gains {-drop:.2f}"
    return (text + f"; it {change} mAP points against FP32 and is "
            f"{b['smaller_than_fp32']:.2f}x smaller than the FP32 ONNX file.")


def peer_gap_sentence(significance: dict, subject: str = SUBJECT, peer: str = "nncf-ov") -> str | None:
    """Whether `subject`'s mAP gap to `peer` is more than image-sampling noise, from the paired shard comparison
    (bench/results/map_significance.json, `python bench/map_significance.py`); None without that row."""
    row = next((r for r in significance.get("rows", [])
                if (r.get("a_target"), r.get("b_target")) == (subject, peer)), None)
    if row is None:
        return None
    verdict = {"no difference": "no measurable difference (the interval holds 0)",
               "a > b": f"{subject} is measurably better", "a < b": f"{peer} is measurably better"}[row["verdict"]]
    return (f"Whether the mAP gap to {peer} is real: on {row['images']} images ({row['shards']} paired shards, "
            f"`python bench/map_significance.py`) {subject} minus {peer} is {row['whole_diff_points']:+.3f} points, "
            f"mean per shard {row['shard_diff_points']:+.3f}, 95% interval [{row['ci_low_points']:+.3f}, "
            f"{row['ci_high_points']:+.3f}]: {verdict}.")


def profile_sentence(profile: dict) -> str:
    """Where ov-mixed's time goes (bench/results/ov_profile.json), against the FP32 graph in bf16."""
    rows = profile["rows"]
    mixed = [r for r in rows if r["target"] == "ov-mixed"]
    floats = [r for r in rows if r["target"] != "ov-mixed"]
    total, float_total = mixed[0]["total_us"], floats[0]["total_us"]
    # OpenVINO names int8 kernels "..._I8" (uint8 activations) or "..._i8" (int8), and an FC whose
    # activations carry no zero point "FullyConnectedQuantizedLegacy".
    int8 = sum(r["us"] for r in mixed if r["kernel"].lower().endswith("_i8"))
    gemm_int8 = sum(r["us"] for r in mixed if r["node_type"].startswith("FullyConnected"))
    gemm_float = sum(r["us"] for r in floats if r["node_type"].startswith("FullyConnected"))
    rest = total - int8
    return (f"Where the time goes (OpenVINO profile, `python bench/ov_profile.py`): ov-mixed spends {total:.0f} µs "
            f"in its layers per inference, {100 * int8 / total:.0f}% in int8 kernels (GEMMs {gemm_int8:.0f} µs, "
            f"against {gemm_float:.0f} µs for the same GEMMs in bf16: {gemm_float / max(gemm_int8, 1e-9):.2f}x) and "
            f"{rest:.0f} µs in float kernels int8 does not touch (attention, softmax, GELU and residual subgraphs, "
            f"transposes, norms); the FP32 graph in bf16 spends {float_total:.0f} µs. Moving further toward the int8 "
            f"MatMul peak needs fewer, larger GEMMs (batching: the FCs on 16 grounding tokens run at under half the "
            f"64-token FCs' rate; the lowering already runs q, k and v as one FC) and a smaller float part: "
            f"the per-head q/k norms (one MVN for q and k of each self-attention since the lowering's heads_first, "
            f"but over rows of 64 values, which this kernel runs slowly), the cross-attentions' key transposes (row "
            f"copies since the lowering) and the LayerNorm affines `fold_norm` cannot move into the weights (a "
            f"LayerNorm with a reader other than a Linear: the grounding tokens add positions after theirs); int8 "
            f"attention matmuls measured slower and cost accuracy.")
