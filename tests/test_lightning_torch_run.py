"""MLXTrainer continues a plain (non-Lightning) torch run: ``torch.save`` of model, optimizer and scheduler.

The hand-written checkpoint most torch scripts write; ``MLXModule.from_checkpoint(path,
source_class=TheTorchModule, scheduler_interval="step")`` restores it (the module gives the layer
rules and parameter order, the optimizer and scheduler kinds come from their state). torch
continuing the same epoch is the oracle: final weights and running statistics within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from test_training_continuation import OPTIMIZERS, SCHEDULERS, MLXNet, TorchNet, _mlx_view, batches

from torch2mlx.errors import Torch2MLXError
from torch2mlx.lightning import MLXModule, MLXTrainer

PER_EPOCH = 4


class GridModule(MLXModule, MLXNet):
    def training_step(self, batch, batch_idx):
        tok, y = batch
        return self(tok, y)


def _torch_epochs(tmp_path, opt_name, sched_name):
    torch.manual_seed(0)
    model = TorchNet()
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = SCHEDULERS[sched_name](opt)
    data = batches(PER_EPOCH)
    for epoch in range(2):
        if epoch == 1:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": 1,
                },
                tmp_path / "run.pt",
            )
        for tok, y in data:
            opt.zero_grad()
            model(tok, y).backward()
            opt.step()
            sched.step()
    return model, data


@pytest.mark.parametrize("opt_name, sched_name", [("AdamW", "OneCycleLR-momentum"), ("SGD", "warmup-cosine")])
@pytest.mark.slow
def test_mlx_trainer_continues_a_saved_torch_run(tmp_path, opt_name, sched_name):
    model, data = _torch_epochs(tmp_path, opt_name, sched_name)
    mlx_model = GridModule.from_checkpoint(tmp_path / "run.pt", source_class=TorchNet, scheduler_interval="step")
    assert mlx_model._t2m_resume["epoch"] == 1
    trainer = MLXTrainer(max_epochs=2, enable_progress_bar=False)
    trainer.fit(mlx_model, data)
    assert trainer.global_step == PER_EPOCH and trainer.scheduler_steps == 2 * PER_EPOCH
    want = _mlx_view(model)
    have = dict(tree_flatten(mlx_model.parameters()))
    assert set(have) == set(want) and "bn.running_var" in have
    assert max(float(np.abs(np.array(have[k]) - want[k]).max()) for k in want) <= 1e-5


def test_how_the_scheduler_stepped_is_asked_for_not_guessed(tmp_path):
    _torch_epochs(tmp_path, "SGD", "StepLR")
    with pytest.raises(Torch2MLXError, match="scheduler_interval="):
        GridModule.from_checkpoint(tmp_path / "run.pt", source_class=TorchNet)
    with pytest.raises(Torch2MLXError, match="mid_epoch must be"):
        GridModule.from_checkpoint(tmp_path / "run.pt", source_class=TorchNet, mid_epoch="rewind")
