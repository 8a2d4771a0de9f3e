"""vggt-deploy: export, quantize, build and benchmark VGGT grounding models.

Importing the package is cheap: heavy runtimes (onnxruntime, tensorrt, pycuda)
are imported inside the modules that need them.
"""

__version__ = "0.1.0"
