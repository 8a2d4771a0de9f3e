"""The compare report as text (ranked table, end-to-end summary) and as a plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vggt_deploy.fileio import atomic_save_figure
from vggt_deploy.quant.compare import CompareResult


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else (f"{v:{spec}}" if math.isfinite(v) else ("inf" if v > 0 else "-inf"))


def format_outputs(outputs: dict[str, dict[str, float]]) -> str:
    """The end-to-end table of `output_agreement`."""
    lines = [f"{'output':24} {'cosine':>9} {'pearson':>9} {'worst r':>9} {'rel L2':>9} {'max abs':>9}"]
    for n, d in outputs.items():
        lines.append(f"{n:24} {d['cosine']:9.5f} {d['pearson_mean']:9.5f} {d['pearson_min']:9.5f} "
                     f"{_fmt(d['rel_l2'], '9.2e')} {d['max_abs']:9.2e}")
    return "\n".join(lines)


def format_table(result: CompareResult, top: int | None = 20) -> str:
    """The `top` worst layers (all when None), the layers not found, and the end-to-end summary."""
    shown = result.layers if top is None else result.layers[:top]
    width = max([28, *(len(r.name) for r in shown)])
    header = (f"{'rank':>4}  {'layer':{width}} {'op':6} {'precision':9} {'SQNR dB':>8} {'rel err':>9} "
              f"{'local SQNR':>10} {'max abs':>9}")
    lines = [header]
    for i, r in enumerate(shown, 1):
        lines.append(f"{i:4d}  {r.name:{width}} {r.op_type:6} {r.precision:9} {_fmt(r.sqnr_db, '8.2f'):>8} "
                     f"{_fmt(r.rel_l2, '9.2e'):>9} {_fmt(r.local_sqnr_db, '10.2f'):>10} {r.max_abs:9.2e}")
    if len(shown) < len(result.layers):
        lines.append(f"      ... {len(result.layers) - len(shown)} more layers (--top to show more)")
    if result.not_found:
        lines.append(f"not found in QDQ graph: {', '.join(result.not_found)}")
    lines += ["", f"end to end ({result.num_images} images):", format_outputs(result.outputs)]
    return "\n".join(lines)


def plot(result: CompareResult, path: str | Path) -> Path:
    """Horizontal bars of SQNR per layer in graph order (quantized and float coloured apart), the local
    SQNR as dots; infinite SQNR (identical) is drawn at the right edge. Written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_name = {r.name: r for r in result.layers}
    rows = [by_name[n] for n in result.graph_order][::-1]  # first layer at the top
    finite = [v for r in rows for v in (r.sqnr_db, r.local_sqnr_db) if v is not None and math.isfinite(v)]
    cap = max(finite, default=0.0) + 10

    def clip(v):
        return min(max(v, 0.0), cap)

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, min(0.22 * len(rows) + 1.6, 60)))
    ax.barh(y, [clip(r.sqnr_db) for r in rows], color=["tab:red" if r.quantized else "tab:blue" for r in rows])
    local = [(i, clip(r.local_sqnr_db)) for i, r in enumerate(rows) if r.local_sqnr_db is not None]
    if local:
        ax.plot([v for _, v in local], [i for i, _ in local], "k.", label="local SQNR (layer fed FP32 inputs)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="tab:red", label="quantized"), Patch(color="tab:blue", label="float")]
    ax.set_yticks(y, [r.name for r in rows], fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"SQNR dB vs FP32 (higher is better; identical drawn at {cap:.0f})")
    ax.set_title(f"per-layer error over {result.num_images} images")
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
