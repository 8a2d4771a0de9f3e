"""TensorRT runner: pycuda device buffers, pinned host memory, async copies on one CUDA stream.

Follows TensorRT 10's name-based tensor API (Runtime.deserialize_cuda_engine,
ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3) and
pycuda's driver API (pagelocked_empty, mem_alloc, memcpy_htod_async,
memcpy_dtoh_async, Stream). Before deserializing, the engine's sidecar is
checked against the running TensorRT and GPU.

With `cuda_graph=True` the enqueue is captured once per input shape into a
CUDA graph and replayed (the developer guide's "CUDA Graphs" recipe, through
cuda-python's cudaStreamBeginCapture / cudaStreamEndCapture /
cudaGraphInstantiate / cudaGraphLaunch on the runner's stream); it saves the
per-layer launch overhead that dominates small batches on Jetson.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggt_deploy.backends.base import Runner
from vggt_deploy.backends.tensorrt.loader import gpu_identity, import_tensorrt
from vggt_deploy.backends.tensorrt.sidecar import check_sidecar, read_sidecar


class TrtRunner(Runner):
    """Runs a serialized engine built by `build-trt` (CUDA or Jetson)."""

    def __init__(self, engine: str | Path, name: str = "trt", cuda_graph: bool = False) -> None:
        super().__init__(name)
        self.engine_path = Path(engine)
        self.cuda_graph = cuda_graph
        self.buffers: dict[str, tuple[np.ndarray, object]] = {}
        self.graphs: dict[tuple, object] = {}

    def _activate(self) -> None:
        sidecar = read_sidecar(self.engine_path)
        trt = import_tensorrt()
        gpu, cc = gpu_identity()
        check_sidecar(self.engine_path, sidecar, trt.__version__, gpu, cc)
        import pycuda.driver as cuda

        self.cuda, self.trt = cuda, trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        profile = sidecar["build"]["profile"]
        self.input_spec = {
            n: (np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))),
                (None, *profile[n][2][1:]) if n != "query_embeds" else tuple(profile[n][2]))
            for n in self.inputs
        }
        self.max_shapes = {n: tuple(profile[n][2]) for n in self.inputs}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype):
        """Pinned host + device memory, grown on demand and reused across calls."""
        host, device = self.buffers.get(name, (None, None))
        size = int(np.prod(shape))
        if host is None or host.size < size:
            host = self.cuda.pagelocked_empty(size, dtype)
            device = self.cuda.mem_alloc(host.nbytes)
            self.buffers[name] = (host, device)
            self.graphs.clear()  # captured graphs point at the old addresses
        return host, device

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.inputs:
            value = np.ascontiguousarray(feeds[name])
            self.context.set_input_shape(name, value.shape)
            host, device = self._buffer(name, value.shape, value.dtype)
            host[: value.size] = value.ravel()
            self.cuda.memcpy_htod_async(device, host, self.stream)
            self.context.set_tensor_address(name, int(device))
        shapes = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            _, device = self._buffer(name, shape, dtype)
            self.context.set_tensor_address(name, int(device))
            shapes[name] = (shape, dtype)
        self._enqueue(tuple(feeds[n].shape for n in self.inputs))
        out = {}
        for name, (shape, dtype) in shapes.items():
            host, device = self.buffers[name]
            self.cuda.memcpy_dtoh_async(host, device, self.stream)
            out[name] = (shape, host)
        self.stream.synchronize()
        return {name: host[: int(np.prod(shape))].reshape(shape).copy() for name, (shape, host) in out.items()}

    def _enqueue(self, key: tuple) -> None:
        if not self.cuda_graph:
            self.context.execute_async_v3(self.stream.handle)
            return
        try:
            from cuda import cudart
        except ImportError:
            from vggt_deploy.errors import UserError

            raise UserError("cuda_graph needs cuda-python: pip install cuda-python (part of the trt extra)") from None
        if key not in self.graphs:
            # Buffers are reused per shape, so a captured graph's addresses stay valid for that shape.
            self.context.execute_async_v3(self.stream.handle)  # first run outside capture (lazy allocations)
            cudart.cudaStreamBeginCapture(self.stream.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
            self.context.execute_async_v3(self.stream.handle)
            _, graph = cudart.cudaStreamEndCapture(self.stream.handle)
            _, self.graphs[key] = cudart.cudaGraphInstantiate(graph, 0)
        cudart.cudaGraphLaunch(self.graphs[key], self.stream.handle)

    def _close(self) -> None:
        self.graphs.clear()
        self.buffers.clear()
        self.context = self.engine = None
