"""MLXTrainer against PyTorch Lightning: the same tiny model, weights, batches and optimizer end together.

Lightning is the oracle. (1) From the same initial weights, N steps in Lightning and in MLXTrainer
(SGD with momentum, and Adam; a StepLR stepping every batch) end with parameters within 1e-4.
(2) A Lightning checkpoint saved at step k, restored with ``MLXModule.from_checkpoint`` (weights,
optimizer moments, scheduler position, epoch and batch counters) and trained to step 2k in MLX,
matches Lightning continuing to 2k: at an epoch boundary, inside an epoch, with a per-epoch
scheduler, and without the source class (rules and kinds inferred from the checkpoint alone).
"""

from __future__ import annotations

import logging
import warnings

import mlx.nn as mnn
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from mlx.utils import tree_flatten
from torch import nn

from torch2mlx.core import rules
from torch2mlx.lightning import MLXModule, MLXTrainer
from torch2mlx.training import forward_specs

BATCHES, TOL = 8, 1e-4


class LitNet(pl.LightningModule):
    def __init__(self, hidden: int = 16, opt: str = "sgd", interval: str = "step"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.hparams.opt == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        if self.hparams.interval == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.hparams.interval}}


class NetMLX(MLXModule):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = [mnn.Linear(6, hidden), mnn.Tanh(), mnn.Linear(hidden, 3)]

    def __call__(self, x):
        for layer in self.net:
            x = layer(x)
        return x


def loader():
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(8 * BATCHES, 6, generator=g), torch.randint(0, 3, (8 * BATCHES,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)


def lightning(epochs: int, callbacks=(), **kw):
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
        **kw,
    )


def gap(lit, model) -> float:
    want = rules.apply_specs(forward_specs(lit), {k: v.detach().numpy() for k, v in lit.state_dict().items()})
    have = dict(tree_flatten(model.parameters()))
    assert set(have) == set(want)
    worst = max(float(np.abs(np.array(have[k]) - want[k]).max()) for k in want)
    print(f"max parameter gap {worst:.2e}")
    return worst


CONFIGS = {
    "sgd-step": dict(opt="sgd", interval="step"),
    "adam-step": dict(opt="adam", interval="step"),
    "adam-epoch": dict(opt="adam", interval="epoch"),
}
CLIP = {
    "sgd-step": dict(gradient_clip_val=0.05),
    "adam-epoch": dict(gradient_clip_val=0.02, gradient_clip_algorithm="value"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per config: Lightning trained 3 epochs from seed 0, checkpoints every epoch and every 5 steps."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, hp in CONFIGS.items():
            d = tmp_path_factory.mktemp(name)
            torch.manual_seed(0)
            lit = LitNet(**hp)
            start = LitNet(**hp)
            start.load_state_dict(lit.state_dict())
            epochs = pl.callbacks.ModelCheckpoint(d, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
            steps = pl.callbacks.ModelCheckpoint(d, filename="{step}", every_n_train_steps=5, save_top_k=-1)
            lightning(3, [epochs, steps]).fit(lit, loader())
            out[name] = {"lit": lit, "start": start, "dir": d}
            if name in CLIP:  # the same run with Lightning's gradient clipping
                torch.manual_seed(0)
                clipped = LitNet(**hp)
                lightning(3, **CLIP[name]).fit(clipped, loader())
                out[name]["clipped"] = clipped
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.slow
def test_same_start_same_end(runs, name):
    run = runs[name]
    model = NetMLX.from_torch(run["start"])
    assert gap(run["start"], model) == 0.0
    trainer = MLXTrainer(max_epochs=3, enable_progress_bar=False)
    trainer.fit(model, loader())
    assert trainer.global_step == 3 * BATCHES
    assert gap(run["lit"], model) <= TOL


@pytest.mark.parametrize("name", sorted(CLIP))
def test_gradient_clipping_as_lightning_clips(runs, name):
    run = runs[name]
    model = NetMLX.from_torch(run["start"])
    MLXTrainer(max_epochs=3, enable_progress_bar=False, **CLIP[name]).fit(model, loader())
    assert gap(run["clipped"], model) <= TOL
    assert gap(run["lit"], model) > 100 * TOL  # clipping changed the run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_from_epoch_checkpoint_matches_lightning(runs, name):
    run = runs[name]
    model = NetMLX.from_checkpoint(run["dir"] / "epoch=0.ckpt", source_class=LitNet)
    assert model._t2m_resume == {"global_step": BATCHES, "epoch": 1, "batches_done": 0, "mid_epoch": "skip"}
    trainer = MLXTrainer(max_epochs=3, enable_progress_bar=False)
    trainer.fit(model, loader())
    assert trainer.global_step == 3 * BATCHES
    assert gap(run["lit"], model) <= TOL


@pytest.mark.parametrize("name", ["sgd-step", "adam-step"])
def test_resume_inside_an_epoch_matches_lightning(runs, name):
    """mid_epoch="skip" (the default): the batches not done yet, as the uninterrupted run."""
    run = runs[name]
    model = NetMLX.from_checkpoint(run["dir"] / "step=10.ckpt", source_class=LitNet)
    assert model._t2m_resume == {"global_step": 10, "epoch": 1, "batches_done": 2, "mid_epoch": "skip"}
    MLXTrainer(max_epochs=3, enable_progress_bar=False).fit(model, loader())
    assert gap(run["lit"], model) <= TOL


@pytest.mark.parametrize("name", ["sgd-step", "adam-step"])
def test_resume_inside_an_epoch_as_lightning_ckpt_path_does(runs, name):
    """mid_epoch="restart": Lightning's own ``fit(ckpt_path=...)`` with a plain DataLoader, which starts the
    epoch's data again at its first batch and ends the epoch after the batches it had left."""
    run = runs[name]
    resumed = LitNet(**CONFIGS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = lightning(3)
        trainer.fit(resumed, loader(), ckpt_path=run["dir"] / "step=10.ckpt")
    model = NetMLX.from_checkpoint(run["dir"] / "step=10.ckpt", source_class=LitNet, mid_epoch="restart")
    mlx_trainer = MLXTrainer(max_epochs=3, enable_progress_bar=False)
    mlx_trainer.fit(model, loader())
    assert mlx_trainer.global_step == trainer.global_step == 3 * BATCHES
    assert gap(resumed, model) <= TOL
    assert gap(run["lit"], model) > 10 * TOL  # the two policies really differ


def test_resume_without_the_source_class(runs):
    """Names, rules, optimizer kind and scheduler kind from the checkpoint alone (the interval is told)."""
    run = runs["adam-step"]
    model = NetMLX.from_checkpoint(run["dir"] / "epoch=1.ckpt", scheduler_interval="step")
    assert type(model.configure_optimizers().optimizer).__name__ == "Adam"
    MLXTrainer(max_epochs=3, enable_progress_bar=False).fit(model, loader())
    assert gap(run["lit"], model) <= TOL


def test_resume_checks_the_mlx_module_names(runs):
    class Misnamed(MLXModule):
        def __init__(self, hidden=16):
            super().__init__()
            self.layers = [mnn.Linear(6, hidden), mnn.Tanh(), mnn.Linear(hidden, 3)]

        def __call__(self, x):
            return x

    from torch2mlx.errors import Torch2MLXError

    with pytest.raises(Torch2MLXError, match="name its layers as the torch module names them"):
        Misnamed.from_checkpoint(runs["sgd-step"]["dir"] / "epoch=0.ckpt", source_class=LitNet)
