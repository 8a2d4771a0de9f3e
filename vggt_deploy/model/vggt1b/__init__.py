"""A clean-room PyTorch port of Meta's VGGT-1B (facebookresearch/vggt, CVPR 2025).

The modules reproduce the reference architecture parameter for parameter: the state
dict has the reference's key names and shapes, so the public ``facebook/VGGT-1B``
checkpoint loads with a strict key check (see ``io.load_vggt1b_weights``; the only keys
it drops are the unported track head's), and given identical weights the outputs match
the reference to float32 rounding.

What differs is how it is written, for export: RoPE tables, the DINO position-embedding
resize and the DPT position embeddings are constants computed (with numpy) for the
static image size, there is no ``torch.cartesian_prod``, no data-dependent control flow,
no autocast, and ``VGGT1B.forward`` returns a plain tuple (``OUTPUT_NAMES``).

Layout:
    config.py       VGGT1BConfig and the registry (``vggt_1b``, ``vggt_1b_tiny``)
    layers.py       LayerScale, Mlp, Attention (q/k-norm, RoPE), Block
    rope.py         2D RoPE positions and tables
    dino.py         DINOv2-with-registers patch embedding, conv patch embedding
    aggregator.py   alternating frame / global attention
    camera_head.py  iterative pose-encoding head
    dpt_head.py     DPT depth / point head
    activations.py  head activations and pose-encoding decoding
    model.py        VGGT1B
    io.py           create_vggt1b, load_vggt1b_weights

Not imported by ``vggt_deploy`` itself; import ``vggt_deploy.model.vggt1b`` explicitly.
"""

from vggt_deploy.model.vggt1b.activations import pose_encoding_to_extri_intri
from vggt_deploy.model.vggt1b.config import VGGT1BConfig, get_vggt1b_config, list_vggt1b_configs
from vggt_deploy.model.vggt1b.io import LoadReport, create_vggt1b, load_vggt1b_weights
from vggt_deploy.model.vggt1b.model import OUTPUT_NAMES, VGGT1B

__all__ = [
    "OUTPUT_NAMES",
    "VGGT1B",
    "LoadReport",
    "VGGT1BConfig",
    "create_vggt1b",
    "get_vggt1b_config",
    "list_vggt1b_configs",
    "load_vggt1b_weights",
    "pose_encoding_to_extri_intri",
]
