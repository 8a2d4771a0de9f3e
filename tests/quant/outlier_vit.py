"""Small ViTs with the activation outliers of real pretrained transformers, for quantization tests.

Pretrained ViTs (DINOv2, CLIP, VGGT-1B) are not Gaussian inside, and their output depends on outliers:

* LayerNorm outlier channels: a few gamma entries are 50-100x the rest, so every token's LayerNorm
  output has 3 channels far larger than the other 125 ("ln-outliers"). They are 2.3% of the values,
  so a 99.99th percentile range keeps them; what they cost is per-tensor int8 resolution.
* Massive activations: one MLP unit writes values ~200x the median into two residual channels of one
  register token. LayerNorm turns that token into a fixed vector whose key every query matches: an
  attention sink that keeps later attention a near no-op ("massive-tokens"). That unit is 1 of the
  ~35k values of its fc2 input per image (0.003%), so a 99.99th percentile range clips it; the sink
  disappears, attention mixes tokens, and the outputs collapse. minmax keeps it.

`OutlierViT` is a random-weight pre-norm ViT with those injected deterministically (`variant`:
"ln-outliers", "massive-tokens" or "both"). The rest of this module is shared by the tests
(test_outlier_models.py) and bench/outlier_models.py: export, images, quantizing with the project's
library or ONNX Runtime's own quantizers, running and comparing outputs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

VARIANTS = ("ln-outliers", "massive-tokens", "both")
OUTPUTS = ("saliency", "embedding")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DIM, DEPTH, HEADS, PATCH, REGISTERS = 128, 4, 4, 8, 3
QK_SCALE = 0.5  # q and k weights: moderately soft attention (patch logits std ~0.3-0.6), robust to int8
# (a) LayerNorm outlier channels: channel -> gamma relative to the typical gamma, in every LayerNorm.
LN_GAMMA = {5: 60.0, 70: 80.0, 90: 100.0}
LN_CLS_OFFSET = 3.0  # CLS residual offset there: its embedding relies on them on every image
LN_POSITION = 2.0  # position embeddings are larger there: they vary within an image, not only across
# (b) Massive activations: only register 0 writes REG_CHANNEL (its distinct embedding); fc1 unit 0 of
# MASSIVE_BLOCK = FC1_GAIN * (normalized REG_CHANNEL - FC1_THRESHOLD) fires on it alone, and fc2
# writes that unit into MASSIVE_CHANNELS (residual channel -> weight).
REG_CHANNEL, REG_VALUE = 33, 15.0
MASSIVE_BLOCK, FC1_GAIN, FC1_THRESHOLD = 1, 60.0, 3.0
MASSIVE_CHANNELS = {80: 0.8, 17: 0.5}
MASSIVE_MLP_SCALE = 0.25  # that MLP's other fc2 weights: it does little besides the massive unit
# (c) Sink in the later blocks: key weight on the massive channels, query bias, and their proj gain
# (dormant heads: large output weights, harmless while the sink holds the attention).
SINK_KEY, SINK_QUERY, SINK_PROJ = 2.5, 2.5, 4.0


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)


class Attention(nn.Module):
    """Multi-head self-attention with q, k, v, proj Linears and explicit matmuls (all visible in ONNX)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (m(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        attn = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OutlierViT(nn.Module):
    """Pre-norm ViT: images [B, 3, S, S] -> saliency [B, 1, S/8, S/8] (per patch), embedding [B, 64] (CLS).

    Tokens are [CLS, 3 registers, (S/8)^2 patches]; learned positions on the patches (as DINOv2 with
    registers). Random weights from `seed`, then `variant`'s outliers are injected.
    """

    def __init__(self, size: int = 64, seed: int = 0, variant: str = "both") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
        self.patch_embed = PatchEmbed(DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.registers = nn.Parameter(torch.zeros(1, REGISTERS, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // PATCH) ** 2, DIM))
        self.blocks = nn.ModuleList(Block(DIM, HEADS) for _ in range(DEPTH))
        self.norm, self.head, self.embed_head = nn.LayerNorm(DIM), nn.Linear(DIM, 1), nn.Linear(DIM, 64)
        with torch.no_grad():
            self._init_random(seed)
            if variant in ("ln-outliers", "both"):
                self._inject_ln_outliers()
            if variant in ("massive-tokens", "both"):
                self._inject_massive_tokens()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed.proj(images)
        b, _, h, w = x.shape
        special = torch.cat([self.cls_token, self.registers], 1).expand(b, -1, -1)
        x = torch.cat([special, x.flatten(2).transpose(1, 2) + self.pos_embed], 1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        saliency = self.head(x[:, 1 + REGISTERS :]).transpose(1, 2).reshape(b, 1, h, w)
        return saliency, self.embed_head(x[:, 0])

    def _init_random(self, seed: int) -> None:
        """Scale-preserving random weights (std 1/sqrt(fan_in)): activations stay O(1) block after block."""
        gen = torch.Generator().manual_seed(seed)

        def normal(p: torch.Tensor, std: float) -> None:
            p.copy_(torch.randn(p.shape, generator=gen) * std)

        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                normal(module.weight, module.weight[0].numel() ** -0.5)
                normal(module.bias, 0.02)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + torch.randn(DIM, generator=gen) * 0.1)
                normal(module.bias, 0.05)
        for p in (self.cls_token, self.registers, self.pos_embed):
            normal(p, 1.0)
        for block in self.blocks:
            block.attn.q.weight.mul_(QK_SCALE)
            block.attn.k.weight.mul_(QK_SCALE)

    def _inject_ln_outliers(self) -> None:
        """(a) 60-100x gamma on the same 3 channels of every LayerNorm, as in pretrained ViTs."""
        # The typical gamma shrinks so LayerNorm outputs keep an RMS of ~1 (what the random Linears
        # expect); the outlier channels then hold ~99% of every LayerNorm output's energy.
        typical = (DIM / (DIM - len(LN_GAMMA) + sum(g * g for g in LN_GAMMA.values()))) ** 0.5
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.mul_(typical)
                for channel, gamma in LN_GAMMA.items():
                    module.weight[channel] = gamma * typical
        for channel in LN_GAMMA:
            self.cls_token[..., channel] += LN_CLS_OFFSET
            self.pos_embed[..., channel] *= LN_POSITION
        # (c) Every reader of a LayerNorm output keeps a typical-size (not, by chance, near-zero) weight
        # column on those channels, so they carry the readers' output: clipping them changes it.
        readers = [m for b in self.blocks for m in (b.attn.q, b.attn.k, b.attn.v, b.mlp.fc1)]
        for linear in [*readers, self.head, self.embed_head]:
            typical_norm = linear.weight.norm(dim=0).mean()
            for channel in LN_GAMMA:
                linear.weight[:, channel] *= typical_norm / linear.weight[:, channel].norm()

    def _inject_massive_tokens(self) -> None:
        """(b) A massive activation on register 0, made by one MLP unit; (c) the attention sink it feeds."""
        u = REG_CHANNEL
        # A direction only register 0 has: nothing else writes channel u up to the massive block.
        for p in (self.patch_embed.proj.weight, self.patch_embed.proj.bias, self.cls_token[0, 0]):
            p[u] = 0
        self.pos_embed[..., u] = 0
        self.registers[..., u] = 0
        self.registers[0, 0, u] = REG_VALUE
        for block in self.blocks[: MASSIVE_BLOCK + 1]:
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight[u], linear.bias[u] = 0, 0
        # fc1 unit 0: a large weight on channel u (in normalized units: divided by the LayerNorm's
        # gamma, whatever the variant) and a threshold, so it is ~0 on every token but register 0.
        norm2, mlp = self.blocks[MASSIVE_BLOCK].norm2, self.blocks[MASSIVE_BLOCK].mlp
        mlp.fc1.weight[0] = 0
        mlp.fc1.weight[0, u] = FC1_GAIN / norm2.weight[u]
        mlp.fc1.bias[0] = -FC1_GAIN * (FC1_THRESHOLD + norm2.bias[u] / norm2.weight[u])
        # fc2 writes that unit into two residual channels only: the massive activations.
        mlp.fc2.weight.mul_(MASSIVE_MLP_SCALE)
        mlp.fc2.weight[:, 0] = 0
        for channel, weight in MASSIVE_CHANNELS.items():
            mlp.fc2.weight[channel, 0] = weight
        # Later blocks: LayerNorm maps register 0 to a near one-hot vector on the massive channels. Each
        # head's first key dimension reads those channels and every query has a bias there, so all
        # queries attend to register 0, whose value ignores them (~0): a sink. Without the massive
        # values the sink is gone, and the dormant heads (large proj) write token mixtures instead.
        head_dim = DIM // HEADS
        for block in self.blocks[MASSIVE_BLOCK + 1 :]:
            for h in range(HEADS):
                for channel in MASSIVE_CHANNELS:
                    block.attn.k.weight[h * head_dim, channel] = SINK_KEY / block.norm1.weight[channel]
                block.attn.q.bias[h * head_dim] = SINK_QUERY
            for channel in MASSIVE_CHANNELS:
                block.attn.v.weight[:, channel] = 0
            block.attn.proj.weight.mul_(SINK_PROJ)


# ---- shared by the tests and bench/outlier_models.py ---------------------------------------------------


def export_outlier_vit(path: str | Path, seed: int = 0, size: int = 64, variant: str = "both") -> Path:
    """Export `OutlierViT(size, seed, variant)` to ONNX: input `images` (dynamic batch), opset 18.

    Opset 18, the project's (`vggt_deploy/export/onnx_export.py`): torch 2.13's dynamo exporter has
    no opset-17 implementations and its down-conversion drops the node metadata that names layers by
    module path (`patch_embed.proj`, `blocks.N.attn.q`, `blocks.N.mlp.fc1`, `head`).
    """
    path = Path(path)
    model = OutlierViT(size=size, seed=seed, variant=variant).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (torch.zeros(2, 3, size, size),), dynamo=True, opset_version=18, verbose=False,
            input_names=["images"], output_names=list(OUTPUTS),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def make_images(folder: str | Path, n: int, size: int = 64, seed: int = 0) -> list[Path]:
    """Write `n` deterministic smooth RGB PNGs (a colour gradient, soft blobs, a little noise)."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5) + 0.5, 0, 1)[..., None]
        image = c0 * (1 - t) + c1 * t
        for _ in range(rng.integers(2, 6)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            image = image * (1 - weight) + rng.uniform(0, 255, 3).astype(np.float32) * weight
        image += rng.normal(0, 4, image.shape)
        paths.append(folder / f"img_{i:03d}.png")
        cv2.imwrite(str(paths[-1]), np.clip(image, 0, 255).astype(np.uint8))
    return paths


def load_inputs(folder: str | Path, size: int = 64) -> np.ndarray:
    """The folder's PNGs preprocessed as calibration preprocesses them: (N, 3, size, size) float32."""
    from vggt_deploy.data.preprocess import PreprocessConfig, preprocess, read_image

    cfg = PreprocessConfig(size=size, mean=MEAN, std=STD)
    return np.stack([preprocess(read_image(p), cfg) for p in sorted(Path(folder).glob("*.png"))])


def plan_text(images: str | Path, method: str | None, percentile: float = 99.99, num_images: int = 32,
              size: int = 64, smoothing: float | None = None, fold_norm: bool = False) -> str:
    """An int8 static per-channel plan for onnxruntime-cpu; `method=None` leaves out the `method:` key;
    `smoothing` (alpha) adds SmoothQuant on every layer that can take it, `fold_norm` LayerNorm folding."""
    calib = {} if method is None else {"method": method}
    if method == "percentile":
        calib["percentile"] = percentile
    calib |= {"images": str(images), "num_images": num_images,
              "input": {"name": "images", "size": size, "mean": list(MEAN), "std": list(STD)}}
    return ("version: 1\ntarget: onnxruntime-cpu\n"
            f"calibration: {json.dumps(calib)}\n"  # JSON is YAML flow style, paths quoted
            "default: {precision: int8, weight_granularity: per-channel, activations: static"
            + (f", smoothing: {{alpha: {smoothing}}}" if smoothing is not None else "")
            + (", fold_norm: true" if fold_norm else "") + "}\n")


def quantize_with_library(onnx_file: Path, out_dir: Path, text: str) -> Path:
    """Quantize with the project's `export_from_onnx` and plan `text`; returns the QDQ model's path.

    Ranges are cached in `out_dir/cache`, never in the user's calibration cache.
    """
    from vggt_deploy.compile import export_from_onnx
    from vggt_deploy.quant.plan import parse_plan

    out_dir = Path(out_dir)
    return export_from_onnx(onnx_file, out_dir, parse_plan(text), cache_dir=out_dir / "cache").qdq


def quantize_ort_reference(onnx_file: Path, out_file: Path, kind: str, calib: np.ndarray | None = None) -> Path:
    """ONNX Runtime's quantizers on the FP32 file: `dynamic` (QInt8 per-channel weights), or `static`
    with its defaults (QDQ, MinMax, per-tensor weights) calibrated on `calib`, one image per batch."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    if kind == "dynamic":
        quantize_dynamic(onnx_file, out_file, per_channel=True, weight_type=QuantType.QInt8)
    else:
        class Reader(CalibrationDataReader):
            feeds = iter([{"images": calib[i : i + 1]} for i in range(len(calib))])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(onnx_file, out_file, Reader())
    return Path(out_file)


def run_model(onnx_file: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of `onnx_file` on `inputs`, one image per run on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    runs = [session.run(list(OUTPUTS), {"images": inputs[i : i + 1]}) for i in range(len(inputs))]
    return {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(OUTPUTS)}


def pearson_per_image(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Pearson r between `ref[i]` and `out[i]`, each flattened, for every image i (0 if one is constant)."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 0.0)


def compare(fp32: dict[str, np.ndarray], quantized: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: the mean and the worst (lowest) per-image Pearson r of `quantized` against `fp32`."""
    rs = {name: pearson_per_image(fp32[name], quantized[name]) for name in OUTPUTS}
    return {name: {"mean_r": float(r.mean()), "worst_r": float(r.min())} for name, r in rs.items()}


def activation_stats(variant: str, inputs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The outlier statistics of `variant` on `inputs`, measured in PyTorch.

    ln_channel_ratio (_min): over all LayerNorm outputs, the largest (smallest) ratio of the largest
    channel absmax to the median channel absmax. massive_ratio: over the residual stream (every
    block's output), the largest max|x| / median|x|.
    """
    model = OutlierViT(size=inputs.shape[-1], seed=seed, variant=variant).eval()
    ln, massive = [], []

    def on_norm(_module, _args, out):
        absmax = out.abs().amax(dim=(0, 1))
        ln.append(float(absmax.max() / absmax.median()))

    hooks = [m.register_forward_hook(on_norm) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    hooks += [b.register_forward_hook(lambda _m, _a, out: massive.append(float(out.abs().max() / out.abs().median())))
              for b in model.blocks]
    with torch.no_grad():
        model(torch.from_numpy(inputs))
    for hook in hooks:
        hook.remove()
    return {"ln_channel_ratio": max(ln), "ln_channel_ratio_min": min(ln), "massive_ratio": max(massive)}
