"""`auto` calibration: each activation's range is chosen by the error it causes downstream.

A fixed percentile is the wrong default for real pretrained transformers. Their few very large
activations ("massive activations": outlier channels after LayerNorm, huge MLP outputs on a
few tokens) are a tiny fraction of the values, so a 99.99th percentile clips them, yet the
network depends on them: a ViT-S quantized that way kept a worst-image correlation of 0.25
with FP32, where plain min/max kept 0.99. On a model without outliers the opposite holds:
clipping a long thin tail buys resolution for the bulk. So `auto` measures, per tensor.

For every activation that a MatMul/Gemm/Conv reads, the calibration pass keeps:
- the exact min and max, and the largest |x| values (enough for percentiles down to 99.9);
- sample rows (one token's channels each): every image's 4 rows with the largest |x|
  exactly (weight 1) and a few random others (weighted for the rows they stand for), so
  a stratified estimate covers both the bulk and the rare outlier tokens.

Candidate ranges are min/max and the 99.9 ... 99.9999th percentiles of |x| (and half of the
max). Each is scored by the error it causes in the *consumers' outputs*: for a Linear
y = x·W the error is ‖(q(x) − x)·W‖² summed over the weighted rows, with W reduced to a
128-column random sketch (Johnson-Lindenstrauss) to keep it cheap; Conv inputs weigh each
channel by its weight energy; activation-by-activation matmuls use plain squared error.
q(x) simulates the target's activation quantizer (uint8 asymmetric for ONNX Runtime and
OpenVINO, int8 symmetric for TensorRT).

Per-tensor output error favours more clipping than the end task does (ONNX Runtime's MSE
calibrator lost 0.3 mAP points on the shipped model), so of the clips within
`WIDER_TOLERANCE` of the best error the widest is taken. It is taken only if it lowers the
error by more than `MIN_GAIN` against min/max, and
never if it clips *structured* outliers that carry signal: a channel clipped in at least
`CONSISTENT` of the calibration images (an outlier channel, or the massive channel of a
sink token, recurs in every image; a stray spike does not) whose rows' outputs then change
by more than `ROW_GUARD` (or twice what min/max gives them). Each decision, with its
reason, goes into the export report and next to the range cache.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from vggt_deploy.errors import UserError
from vggt_deploy.graph.layers import QUANT_OPS
from vggt_deploy.graph.onnx_io import TOKENS_PER_FRAME_KEY
from vggt_deploy.quant.activation_stats import feed_item, iterate_activations
from vggt_deploy.quant.calib_passes import PASS_BYTES, pass_groups

PERCENTILES = (99.9, 99.99, 99.999, 99.9999)
TOP_ROWS = 4  # rows kept exactly per image: the rare outlier tokens
ROW_BUDGET = 2048  # sample rows kept per tensor over all images (memory bound)
SKETCH_COLS = 128
MIN_GAIN = 0.02  # a clip must lower the consumer error by more than 2% to be taken
ROW_GUARD = 0.05  # ...and leave the rows of consistent outlier channels within 5% (or 2x their min/max error)
WIDER_TOLERANCE = 0.1  # ...and of the clips within 10% of the best error, the widest is taken
CONSISTENT = 0.25  # a channel clipped in this fraction of the images is a structured outlier


@dataclass
class _Consumer:
    """How a consumer turns an input error into an output error: `sketch` [C, d], or None (identity)."""

    layer_node: str
    sketch: np.ndarray | None
    conv: bool = False  # a Conv reads channels on axis 1, not the last axis


@dataclass
class _Stats:
    """Streaming statistics of one tensor over the calibration images."""

    channel_axis: int
    lo: float = math.inf
    hi: float = -math.inf
    elements: int = 0
    top: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    rows: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    exact: list = field(default_factory=list)
    image: list = field(default_factory=list)  # the image of each exact row
    images: int = 0


@dataclass
class Decision:
    """The range chosen for one tensor, and why."""

    tensor: str
    consumers: list[str]
    choice: str
    range: tuple[float, float]
    full_range: tuple[float, float]
    clipped_fraction: float
    error_vs_minmax: float
    reason: str
    candidates: dict[str, float]


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """Values as rows of channels: [positions, channels]."""
    if x.ndim <= 1:
        return x.reshape(-1, 1)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def _consumers(model: onnx.ModelProto, weights_dir: Path | None = None) -> dict[str, list[_Consumer]]:
    """For every tensor read by a MatMul/Gemm/Conv, how each reader weighs its error (weights read one at a
    time, from their external data file in `weights_dir` when `model` is a graph without them)."""
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    out: dict[str, list[_Consumer]] = {}
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS:
            continue
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        w = (numpy_helper.to_array(weight, base_dir=str(weights_dir or "")).astype(np.float32)
             if weight is not None else None)
        for i, name in enumerate(node.input[:2]):
            if not name or name in inits:
                continue
            sketch = None
            if i == 0 and w is not None:
                if node.op_type == "Conv":  # per input channel: the energy of its filters
                    sketch = np.diag(np.sqrt((w.swapaxes(0, 1).reshape(w.shape[1], -1) ** 2).sum(1)))
                elif w.ndim == 2:
                    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                    mat = w.T if trans_b else w
                    if mat.shape[1] > SKETCH_COLS:
                        mat = mat @ (rng.standard_normal((mat.shape[1], SKETCH_COLS)) / math.sqrt(SKETCH_COLS))
                    sketch = mat.astype(np.float32)
            out.setdefault(name, []).append(_Consumer(node.name, sketch, node.op_type == "Conv"))
    return out


def _observe(stats: _Stats, x: np.ndarray, keep_top: int, random_rows: int, rng: np.random.Generator) -> None:
    stats.lo, stats.hi = min(stats.lo, float(x.min())), max(stats.hi, float(x.max()))
    stats.elements += x.size
    flat = np.abs(x).ravel()
    k = min(keep_top, flat.size)
    part = np.partition(flat, flat.size - k)[flat.size - k:]
    merged = np.concatenate([stats.top, part])
    stats.top = np.partition(merged, merged.size - keep_top)[merged.size - keep_top:] if merged.size > keep_top else merged
    rows = _rows(x, stats.channel_axis)
    order = np.argsort(np.abs(rows).max(axis=1))
    top = order[-TOP_ROWS:]
    rest = order[:-TOP_ROWS]
    stats.rows.append(rows[top])
    stats.weights.append(np.ones(len(top)))
    stats.exact.append(np.ones(len(top), bool))
    stats.image.append(np.full(len(top), stats.images))
    stats.images += 1
    if len(rest):
        pick = rng.choice(rest, size=min(random_rows, len(rest)), replace=False)
        stats.rows.append(rows[pick])
        stats.weights.append(np.full(len(pick), len(rest) / len(pick)))
        stats.exact.append(np.zeros(len(pick), bool))


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    """ONNX Runtime's scale and zero point for an activation range [lo, hi]: int8 with zero point 0
    (TensorRT, symmetric), or uint8 whose range always holds 0. A range of width 0 gives scale 0."""
    if symmetric:
        return max(abs(lo), abs(hi)) / 127.0, 0.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    return scale, (float(min(max(round(-lo / scale), 0), 255)) if scale > 0 else 0.0)


def fake_quant(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    """x through the target's activation QuantizeLinear/DequantizeLinear with range [lo, hi]."""
    scale, zero = activation_qparams(lo, hi, symmetric)
    scale = scale or 1.0
    if symmetric:
        return np.clip(np.round(x / scale), -128, 127) * scale
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _output_error(err: np.ndarray, consumers: list[_Consumer]) -> np.ndarray:
    """Per row: the squared error it causes summed over the consumers' outputs."""
    total = np.zeros(len(err))
    for c in consumers:
        e = err if c.sketch is None else err @ c.sketch
        total += (e.astype(np.float64) ** 2).sum(axis=1)
    return total


def _percentile(stats: _Stats, p: float) -> float | None:
    rank = int(stats.elements * (1 - p / 100.0))
    if rank >= stats.top.size or rank < 1:
        return None
    return float(np.sort(stats.top)[::-1][rank])


def _decide(name: str, stats: _Stats, consumers: list[_Consumer], symmetric: bool) -> Decision:
    rows = np.concatenate(stats.rows)
    weights = np.concatenate(stats.weights)
    exact = np.concatenate(stats.exact)
    absmax = max(abs(stats.lo), abs(stats.hi))
    candidates: dict[str, float] = {"minmax": absmax}
    for p in PERCENTILES:
        t = _percentile(stats, p)
        if t is not None and 0 < t < absmax:
            candidates[f"p{p:g}"] = t
    candidates["max/2"] = absmax / 2
    top_rows, top_image = rows[exact], np.concatenate(stats.image)
    signal = np.sqrt(_output_error(top_rows, consumers)) + 1e-12
    scores: dict[str, float] = {}
    harm: dict[str, tuple[list[int], float]] = {}  # consistent channels a candidate clips, worst row damage
    minmax_rel = None
    for label, t in candidates.items():
        lo, hi = max(stats.lo, -t), min(stats.hi, t)
        err = fake_quant(rows, lo, hi, symmetric) - rows
        per_row = _output_error(err, consumers)
        scores[label] = float((per_row * weights).sum())
        rel = np.sqrt(per_row[exact]) / signal
        if minmax_rel is None:
            minmax_rel = rel
        harm[label] = _structured_harm(top_rows, top_image, stats.images, t, rel, np.maximum(ROW_GUARD, 2 * minmax_rel))
    base = scores["minmax"] or 1e-30
    choice, reason = "minmax", "no clipping candidate lowered the consumers' output error"
    best = min((lab for lab in candidates if lab != "minmax"), key=scores.get, default=None)
    if best is not None:  # the widest clip nearly as good: local error favours clipping more than the task does
        best = next(lab for lab in sorted(candidates, key=candidates.get, reverse=True)
                    if lab != "minmax" and scores[lab] <= scores[best] * (1 + WIDER_TOLERANCE))
    if best is not None and scores[best] < base * (1 - MIN_GAIN):
        channels, damage = harm[best]
        if not channels:
            choice = best
            reason = f"clipping at {best} lowers the consumers' output error to {scores[best] / base:.2f}x of minmax"
        else:
            shown = ", ".join(map(str, channels[:6])) + (" ..." if len(channels) > 6 else "")
            reason = (f"{best} would lower the output error to {scores[best] / base:.2f}x, but it clips outlier "
                      f"channel(s) {shown}, present in most images, and changes their tokens' outputs by up to "
                      f"{damage:.0%}: these outliers carry signal")
    elif best is not None:
        reason = f"clipping does not pay: the best clip ({best}) gives {scores[best] / base:.2f}x minmax's output error"
    t = candidates[choice]
    rng_ = (max(stats.lo, -t), min(stats.hi, t))
    clipped = float((stats.top > t).sum()) / max(stats.elements, 1) if choice != "minmax" else 0.0
    return Decision(name, [c.layer_node for c in consumers], choice, rng_, (stats.lo, stats.hi), clipped,
                    scores[choice] / base, reason, {k: v / base for k, v in scores.items()})


def _structured_harm(rows: np.ndarray, image: np.ndarray, images: int, t: float, rel: np.ndarray,
                     tolerated: np.ndarray) -> tuple[list[int], float]:
    """Consistent outlier channels that clipping at `t` damages, and the worst relative output error of their rows.

    `rel` is each row's relative output error under this candidate, `tolerated` the most it may be.
    """
    clipped = np.abs(rows) > t
    if not clipped.any():
        return [], 0.0
    per_channel = np.array([len(np.unique(image[clipped[:, c]])) for c in range(rows.shape[1])])
    consistent = np.flatnonzero(per_channel >= max(1, CONSISTENT * images))
    hit = clipped[:, consistent].any(axis=1)
    if not consistent.size or not (rel[hit] > tolerated[hit]).any():
        return [], 0.0
    return consistent.tolist(), float(rel[hit].max())


def token_exclusion(model: onnx.ModelProto, spec) -> tuple[int, int] | None:
    """(first, period) of the plan's ``calibration.exclude_tokens`` for `model` (None: keep every row).

    ``period: frame`` is read from the model's `TOKENS_PER_FRAME_KEY` metadata.
    """
    ex = spec.exclude_tokens
    if ex is None:
        return None
    if ex.period != "frame":
        return ex.first, int(ex.period)
    meta = {p.key: p.value for p in model.metadata_props}
    if TOKENS_PER_FRAME_KEY not in meta:
        raise UserError(f"calibration.exclude_tokens.period is frame, but the model carries no {TOKENS_PER_FRAME_KEY} "
                        "metadata: give the period as a number of token rows (tokens per frame)")
    return ex.first, int(meta[TOKENS_PER_FRAME_KEY])


def drop_token_rows(x: np.ndarray, first: int, period: int) -> np.ndarray:
    """`x` without the first `first` rows of each `period` rows of its token axis (the second-to-last);
    `period` 0: the whole axis. Unchanged when the axis does not divide into periods or is too short."""
    if x.ndim < 2:
        return x
    length = x.shape[-2]
    period = period or length
    if length % period or period <= first:
        return x
    keep = np.arange(length) % period >= first
    return x[..., keep, :]


def auto_ranges(model: onnx.ModelProto, images: np.ndarray, image_input: str,
                extra_feeds: dict[str, np.ndarray] | None, symmetric: bool,
                exclude_tokens: tuple[int, int] | None = None,
                weights_dir: Path | None = None, pass_bytes: int | None = None) -> tuple[dict, list[Decision]]:
    """{tensor: (lo, hi)} for every input and output of a MatMul/Gemm/Conv, and the decisions.

    Inputs read by a MatMul/Gemm/Conv are chosen as described above; other tensors (outputs,
    which this project never re-quantizes) get their min/max. `exclude_tokens` (first, period)
    leaves special-token rows out of every token-major tensor's statistics (`drop_token_rows`;
    Conv inputs are channel-major and kept whole). `weights_dir`: see `iterate_activations`.

    A model with external weights (`weights_dir`) is calibrated in passes over the images, each
    pass reading as many tensors as fit `pass_bytes` (default `PASS_BYTES`) per image (`pass_groups`),
    and each pass's tensors decided and their samples dropped before the next: VGGT-1B's activations
    of one sequence and their samples would otherwise take 16 GB beside the session's 5 at 224 px.
    """
    consumers = _consumers(model, weights_dir)
    inits = {t.name for t in model.graph.initializer}
    outputs = [o for n in model.graph.node if n.op_type in QUANT_OPS for o in n.output]
    tensors = list(dict.fromkeys([*consumers, *(o for o in outputs if o not in inits)]))
    budget = pass_bytes or (PASS_BYTES if weights_dir is not None else None)
    groups = [tensors] if budget is None else pass_groups(model, tensors, feed_item(images, 0), budget)
    ranges: dict[str, tuple[float, float]] = {}
    decisions: list[Decision] = []
    rng = np.random.default_rng(0)
    for group in groups:
        stats = _pass(model, group, consumers, images, image_input, extra_feeds, exclude_tokens, weights_dir, rng)
        ranges.update({name: (st.lo, st.hi) for name, st in stats.items()})
        for name in group:
            if name in consumers and name in stats:
                decisions.append(_decide(name, stats.pop(name), consumers[name], symmetric))
                ranges[name] = decisions[-1].range
    return ranges, decisions


def _pass(model: onnx.ModelProto, group: list[str], consumers: dict, images: np.ndarray, image_input: str,
          extra_feeds, exclude_tokens, weights_dir, rng) -> dict[str, _Stats]:
    """Statistics of the tensors of `group` over all images."""
    n = len(images)
    random_rows = max(4, ROW_BUDGET // max(n, 1) - TOP_ROWS)
    stats: dict[str, _Stats] = {}
    for values in iterate_activations(model, group, images, image_input, extra_feeds, desc="calibrating (auto)",
                                      weights_dir=weights_dir):
        for name in group:
            x = values[name]
            if name not in stats:
                conv = any(c.conv for c in consumers.get(name, []))
                stats[name] = _Stats(channel_axis=1 if conv else -1)
            s = stats[name]
            if exclude_tokens is not None and s.channel_axis == -1:
                x = drop_token_rows(x, *exclude_tokens)
            if name not in consumers:  # min/max only
                s.lo, s.hi = min(s.lo, float(x.min())), max(s.hi, float(x.max()))
                continue
            keep_top = max(2, math.ceil(x.size * n * (1 - PERCENTILES[0] / 100.0)) + 2)
            _observe(s, x, keep_top, random_rows, rng)
    return stats


def write_cache(ranges: dict, decisions: list[Decision], cache_file: Path) -> None:
    """The range cache quantize_static reads (MinMax-labelled), and the decisions beside it."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    from vggt_deploy.fileio import atomic_write_json

    data = {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for k, (lo, hi) in ranges.items()}
    atomic_write_json(decisions_path(cache_file), [asdict(d) for d in decisions])
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache_file)


def decisions_path(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.stem + ".decisions.json")


def read_decisions(cache_file: Path) -> list[dict]:
    """The decisions stored beside a range cache ([] when absent or unreadable)."""
    try:
        data = json.loads(decisions_path(cache_file).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
