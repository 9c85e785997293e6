"""MLXTrainer's own behaviour: batches, logging, ModelCheckpoint, EarlyStopping, ReduceLROnPlateau, errors."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import mlx.core as mx
import mlx.nn as mnn
import mlx.optimizers as optim
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import torch2mlx
from torch2mlx.errors import Torch2MLXError
from torch2mlx.lightning import (
    EarlyStopping,
    MLXModule,
    MLXTrainer,
    ModelCheckpoint,
    OptimConfig,
    ReduceLROnPlateau,
    to_mlx,
)


class Tiny(MLXModule):
    def __init__(self, lr=0.5):
        super().__init__()
        self.fc = mnn.Linear(2, 2)
        self.lr = lr

    def __call__(self, x):
        return self.fc(x)

    def configure_optimizers(self):
        return optim.SGD(learning_rate=self.lr)


def blobs(n=64, seed=0, batch=16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(0, 0.5, (n, 2)) + np.where(y[:, None] == 1, 1.5, -1.5)).astype(np.float32)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class Scripted(Tiny):
    """Validation logs a given sequence of values, one per epoch."""

    def __init__(self, values):
        super().__init__()
        object.__setattr__(self, "values", list(values))
        object.__setattr__(self, "epoch", 0)

    def validation_step(self, batch, batch_idx):
        self.log("metric", self.values[self.epoch])

    def on_epoch(self):
        object.__setattr__(self, "epoch", self.epoch + 1)


class Advance:
    def on_validation_end(self, trainer, model):
        model.on_epoch()


def test_plain_iterables_train_and_log(tmp_path):
    mx.random.seed(0)
    model = Tiny()
    trainer = MLXTrainer(max_epochs=3, log_every_n_steps=2, enable_progress_bar=True, default_root_dir=tmp_path)
    val = blobs(32, seed=1)
    before = trainer.validate(model, val)
    trainer.fit(model, blobs(), val)
    after = trainer.callback_metrics
    assert trainer.global_step == 12 and trainer.current_epoch == 3
    assert after["val_loss"] < before["val_loss"] and after["val_acc"] == 1.0
    train_rows = [r for r in trainer.history if "train_loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,name,value" and any(",val_acc," in r for r in rows)


def test_torch_dataloader_batches_and_max_steps():
    data = torch.utils.data.TensorDataset(torch.randn(40, 2, dtype=torch.float64), torch.randint(0, 2, (40,)))
    trainer = MLXTrainer(max_epochs=5, max_steps=7, enable_progress_bar=False)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    assert trainer.global_step == 7


def test_to_mlx_walks_containers():
    Pair = collections.namedtuple("Pair", "x y")
    got = to_mlx({"a": Pair(torch.ones(2, dtype=torch.bfloat16), np.zeros(3)), "b": [torch.arange(3)], "c": "text"})
    assert got["a"].x.dtype == mx.bfloat16 and got["a"].y.dtype == mx.float32 and isinstance(got["a"], Pair)
    assert got["b"][0].tolist() == [0, 1, 2] and got["c"] == "text"


def test_model_checkpoint_keeps_the_best_and_the_last(tmp_path):
    model = Scripted([3.0, 1.0, 2.0, 0.5, 4.0])
    ckpt = ModelCheckpoint(tmp_path, monitor="metric", mode="min", save_top_k=2, save_last=True)
    MLXTrainer(max_epochs=5, callbacks=[ckpt, Advance()], enable_progress_bar=False).fit(model, blobs(), blobs(16))
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["epoch=1-step=8", "epoch=3-step=16", "last"]
    assert ckpt.best_model_score == 0.5 and ckpt.best_model_path.endswith("epoch=3-step=16")
    last = torch2mlx.load_converted(tmp_path / "last")
    for k, v in tree_flatten(model.parameters()):
        assert np.array_equal(np.array(last[k]), np.array(v))
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 20 and state["epoch"] == 4
    assert (tmp_path / "last" / "optimizer.safetensors").is_file()


def test_resume_from_an_mlx_checkpoint_continues_the_run(tmp_path):
    class Sched(Tiny):
        def configure_optimizers(self):
            return {
                "optimizer": optim.Adam(learning_rate=0.1),
                "lr_scheduler": {"scheduler": lambda n: 0.1 * 0.7**n, "interval": "step"},
            }

    mx.random.seed(0)
    whole = Sched()
    start = dict(tree_flatten(whole.parameters()))
    MLXTrainer(max_epochs=4, enable_progress_bar=False).fit(whole, blobs())
    first = Sched()
    first.load_weights(list(start.items()))
    ckpt = ModelCheckpoint(tmp_path, save_top_k=0, save_last=True)
    MLXTrainer(max_epochs=2, callbacks=[ckpt], enable_progress_bar=False).fit(first, blobs())
    again = Sched().resume_from(tmp_path / "last")
    trainer = MLXTrainer(max_epochs=4, enable_progress_bar=False)
    trainer.fit(again, blobs())
    assert trainer.global_step == 16 and trainer.scheduler_steps == 16
    for k, v in tree_flatten(whole.parameters()):
        assert np.array_equal(np.array(dict(tree_flatten(again.parameters()))[k]), np.array(v)), k

    class Kept(Sched):  # one optimizer for the model's life, as from_checkpoint's
        def configure_optimizers(self):
            if "cfg" not in self.__dict__:
                self.__dict__["cfg"] = Sched.configure_optimizers(self)
            return self.__dict__["cfg"]

    twice = Kept()  # two fits of one model: the second continues the first
    twice.load_weights(list(start.items()))
    MLXTrainer(max_epochs=2, enable_progress_bar=False).fit(twice, blobs())
    MLXTrainer(max_epochs=4, enable_progress_bar=False).fit(twice, blobs())
    for k, v in tree_flatten(whole.parameters()):
        assert np.array_equal(np.array(dict(tree_flatten(twice.parameters()))[k]), np.array(v)), k
    (tmp_path / "last" / "trainer_state.json").unlink()
    with pytest.raises(Torch2MLXError, match="no readable trainer_state.json"):
        Sched().resume_from(tmp_path / "last")


def test_early_stopping_stops_after_patience():
    stop = EarlyStopping(monitor="metric", patience=2)
    trainer = MLXTrainer(max_epochs=10, callbacks=[stop, Advance()], enable_progress_bar=False)
    trainer.fit(Scripted([5, 4, 4.5, 4.2, 1, 1, 1, 1, 1, 1]), blobs(), blobs(16))
    assert stop.stopped_epoch == 3 and trainer.current_epoch == 4 and stop.best == 4


def test_reduce_lr_on_plateau_follows_torch():
    values = [5, 4, 4, 4, 4, 3.9999, 3, 3, 3, 3, 3, 3]
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=0.5)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=1, cooldown=1, threshold=1e-3)
    want = []
    for v in values:
        ref.step(v)
        want.append(topt.param_groups[0]["lr"])
    got = []

    class Record:
        def on_validation_end(self, trainer, model):
            got.append(float(trainer.optimizer.learning_rate.item()))

    cb = ReduceLROnPlateau(monitor="metric", factor=0.5, patience=1, cooldown=1, threshold=1e-3)
    MLXTrainer(max_epochs=len(values), callbacks=[cb, Record(), Advance()], enable_progress_bar=False).fit(
        Scripted(values), blobs(), blobs(16)
    )
    assert got == pytest.approx(want, rel=1e-7)
    assert len(set(want)) > 2  # it did reduce, more than once


def test_missing_optimizer_and_unknown_metric_are_user_errors():
    class NoOpt(MLXModule):
        def __init__(self):
            super().__init__()
            self.fc = mnn.Linear(2, 2)

        def __call__(self, x):
            return self.fc(x)

    with pytest.raises(Torch2MLXError, match="override configure_optimizers"):
        MLXTrainer(enable_progress_bar=False).fit(NoOpt(), blobs())
    with pytest.raises(Torch2MLXError, match="monitors 'nope'"):
        MLXTrainer(callbacks=[EarlyStopping("nope")], enable_progress_bar=False).fit(Tiny(), blobs(), blobs(16))


def test_configure_optimizers_in_lightning_forms():
    sched = lambda count: 0.1 * 0.5**count  # noqa: E731  (an MLX schedule: any callable)

    class Scheduled(Tiny):
        def configure_optimizers(self):
            return {
                "optimizer": optim.SGD(learning_rate=1.0),
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 2},
            }

    lrs = []

    class Record:
        def on_train_epoch_end(self, trainer, model):
            lrs.append(float(trainer.optimizer.learning_rate.item()))

    trainer = MLXTrainer(max_epochs=2, callbacks=[Record()], enable_progress_bar=False)
    trainer.fit(Scheduled(), blobs(80))  # 5 batches an epoch; as Lightning: after batches 2 and 4 of each
    assert lrs == pytest.approx([sched(2), sched(4)]) and trainer.scheduler_steps == 4  # by global step: 5
    with pytest.raises(Torch2MLXError, match="one optimizer"):
        MLXTrainer(enable_progress_bar=False).fit(
            type("Two", (Tiny,), {"configure_optimizers": lambda self: [optim.SGD(0.1), optim.SGD(0.1)]})(), blobs()
        )
    assert isinstance(OptimConfig(optim.SGD(0.1)).optimizer, optim.SGD)


def test_importing_the_package_stays_light():
    code = (
        "import sys, torch2mlx, torch2mlx.training; "
        "print(sorted(m for m in ('torch', 'mlx', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
