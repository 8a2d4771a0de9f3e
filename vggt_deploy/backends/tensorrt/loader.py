"""Lazy imports of TensorRT and pycuda, shared by the builder and the runner.

Neither is importable on machines without NVIDIA's wheels; each import says what to install.
"""

from __future__ import annotations

from vggt_deploy.errors import UserError


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError("TensorRT is not installed: `pip install .[trt]` on a machine with NVIDIA's wheels, "
                        "or use the docker/Dockerfile.gpu or Dockerfile.jetson image") from None
    return tensorrt


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') via pycuda."""
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
    except ImportError:
        raise UserError("pycuda is not installed: `pip install .[trt]` (needs the CUDA toolkit) or use the Docker image") from None
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"
