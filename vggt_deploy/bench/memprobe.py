"""Peak memory of one target, measured in a fresh process.

The benchmark process has already exported, calibrated and evaluated, so its
own resident-set growth says little about a target. Here a new interpreter
loads only the one target, runs one batch and reports its peak RSS
(VmHWM of /proc/self/status: unlike ru_maxrss, it is not inherited from the
forking parent), which is what an edge box running that target would need.

    python -m vggt_deploy.bench.memprobe '{"backend": "onnxruntime", "path": "...", "batch": 1, ...}'
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def probe(spec: dict) -> float:
    """Run the target described by `spec` once; peak RSS in MB."""
    if "input_shapes" in spec:  # any model: {input name: shape}, zeros
        feeds = {name: np.zeros(shape, np.float32) for name, shape in spec["input_shapes"].items()}
    else:  # the grounding VGGT contract
        size, dim, queries = spec["image_size"], spec["ground_dim"], spec["num_queries"]
        feeds = {"images": np.zeros((spec["batch"], 3, size, size), np.float32),
                 "query_embeds": np.zeros((queries, dim), np.float32)}
    if spec["backend"] == "torch":
        from vggt_deploy.backends.torch.runner import TorchRunner

        runner = TorchRunner(spec["path"], dynamic_int8=spec.get("dynamic_int8", False), threads=spec["threads"])
    elif spec["backend"] == "openvino":
        from vggt_deploy.backends.openvino.runner import OvRunner

        runner = OvRunner(spec["path"], threads=spec["threads"], precision=spec.get("precision"))
    else:
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner

        runner = OrtRunner(spec["path"], threads=spec["threads"])
    with runner:
        runner.infer(feeds)
    with open("/proc/self/status") as f:
        hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return hwm_kb / 1024


def peak_rss_mb(spec: dict, timeout: float = 300) -> float | None:
    """`probe` in a child process (None if it fails)."""
    proc = subprocess.run([sys.executable, "-m", "vggt_deploy.bench.memprobe", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    try:
        return round(float(proc.stdout.strip().splitlines()[-1]), 1)
    except (ValueError, IndexError):
        return None


if __name__ == "__main__":
    print(probe(json.loads(sys.argv[1])))
