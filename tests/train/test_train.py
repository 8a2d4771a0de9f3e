import json

import numpy as np
import torch

from vggt_deploy.model.config import get_config
from vggt_deploy.model.io import load_model
from vggt_deploy.train.data import synthetic_train_data
from vggt_deploy.train.loop import TrainConfig, batch_indices, train
from vggt_deploy.train.matcher import hungarian_match


def _data():
    return synthetic_train_data(64, get_config("vggt_tiny").preprocess, workers=1)


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = TrainConfig(steps=60, batch_size=16, lr=2e-3, warmup_steps=5, log_every=1, checkpoint_every=1000, bf16=False)
    out = train(get_config("vggt_tiny"), _data(), cfg, tmp_path / "m")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first = np.mean([r["total"] for r in log[:5]])
    last = np.mean([r["total"] for r in log[-5:]])
    assert last < 0.85 * first, (first, last)
    loaded = load_model(out)
    assert loaded.meta["train"]["seeds"] == {"python": 0, "numpy": 0, "torch": 0}


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = _data()
    base = dict(batch_size=8, warmup_steps=2, log_every=1, bf16=False)
    full = train(get_config("vggt_tiny"), data, TrainConfig(steps=6, checkpoint_every=100, **base), tmp_path / "full")
    # Interrupt a run after step 3 (its checkpoint), then resume it to the end.
    resumed = tmp_path / "resumed"
    train(get_config("vggt_tiny"), data, TrainConfig(steps=6, checkpoint_every=3, **base), resumed, stop_at=3)
    assert json.loads((resumed / "checkpoint" / "state.json").read_text())["step"] == 3
    train(get_config("vggt_tiny"), data, TrainConfig(steps=6, checkpoint_every=3, **base), resumed, resume=True)
    a, b = load_model(full).model.state_dict(), load_model(resumed).model.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_batches_are_a_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=4, seed=3)
    assert np.array_equal(batch_indices(7, 20, cfg), batch_indices(7, 20, cfg))
    epoch = np.concatenate([batch_indices(s, 20, cfg) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(20))


def test_matcher_pairs_each_object_with_the_nearest_token():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.3, 0.3]])
    gt = torch.tensor([[0.79, 0.81, 0.1, 0.1], [0.21, 0.2, 0.1, 0.1]])
    rows, cols = hungarian_match(boxes, torch.zeros(3, 2), gt, torch.tensor([0, 1]))
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}
