"""Training the grounding VGGT: matcher, losses, in-memory data, the loop.

Constants the CLI offers as choices live here so that `vggt-deploy --help` does not import torch.
"""

CLS_LOSSES = ("focal", "ce")  # sigmoid focal loss, or softmax cross-entropy over the queries
