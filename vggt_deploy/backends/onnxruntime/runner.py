"""ONNX Runtime runner (CPU provider; CUDA / TensorRT providers where installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.backends.onnxruntime.session import create_session, make_session, session_options

_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
           "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32), "tensor(uint8)": np.dtype(np.uint8)}


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        path: the .onnx (or .ort) file.
        threads: intra-op threads (None: ONNX Runtime's default); pools never spin.
        providers: execution providers; default CPU only.
    """

    def __init__(self, path: str | Path, name: str = "ort", threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        super().__init__(name)
        self.path, self.threads = Path(path), threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.session = None

    def _activate(self) -> None:
        if self.providers == ["CPUExecutionProvider"]:
            self.session = make_session(self.path, threads=self.threads)
        else:
            self.session = create_session(self.path, session_options(self.threads), self.providers)
        self.input_spec = {
            i.name: (_DTYPES.get(i.type, np.dtype(np.float32)), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self.session.get_inputs()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def _close(self) -> None:
        self.session = None
