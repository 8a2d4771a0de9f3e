"""PyTorch runner: the reference FP32 model (and PyTorch's own dynamic int8 as a peer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.model.vggt import OUTPUT_NAMES


class TorchRunner(Runner):
    """Runs a model folder in PyTorch on the CPU.

    Args:
        model_dir: a model folder (safetensors + config + vocabulary).
        dynamic_int8: apply `torch.ao.quantization.quantize_dynamic` to the Linear layers
            (PyTorch's own int8 path, benchmarked as a peer).
        threads: torch intra-op threads (None: leave as is).
    """

    def __init__(self, model_dir: str | Path, name: str = "torch", dynamic_int8: bool = False,
                 threads: int | None = None) -> None:
        super().__init__(name)
        self.model_dir, self.dynamic_int8, self.threads = Path(model_dir), dynamic_int8, threads
        self.model = None

    def _activate(self) -> None:
        import torch

        from vggt_deploy.model.io import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        model = load_model(self.model_dir).model.eval()
        if self.dynamic_int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        cfg = model.cfg
        self.input_spec = {"images": (np.dtype(np.float32), (None, 3, cfg.image_size, cfg.image_size)),
                           "query_embeds": (np.dtype(np.float32), (None, cfg.ground_dim))}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(feeds["images"]), torch.from_numpy(feeds["query_embeds"]))
        return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, out)}

    def _close(self) -> None:
        self.model = None
