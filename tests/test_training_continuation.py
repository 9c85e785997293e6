"""A torch run saved as three state dicts continues in a plain MLX loop as it continues in torch.

A model with an embedding, a conv, a BatchNorm (running statistics) and an attention layer trains
4 steps in torch; ``torch.save({"model", "optimizer", "scheduler"})`` goes through a file; the
weights are converted with ``torch2mlx.convert`` and the training state with
``convert_optimizer(state, model, schedule=state)``; then 4 more steps in torch and in a hand-written
MLX loop (``optimizer.update(model, grads)``, nothing else). torch is the oracle: every step's applied
learning rate (and cycled beta1/momentum) within 1e-6 relative, final weights and running statistics
within 1e-5, for every optimizer x scheduler.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from torch import nn
from torch.optim import lr_scheduler as L

import torch2mlx
from torch2mlx.core import rules
from torch2mlx.errors import Torch2MLXError
from torch2mlx.training import convert_optimizer, forward_specs

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

DONE, MORE = 4, 4


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        # no bias before the BatchNorm (and none in attention): a parameter whose true gradient is zero
        # gets float noise that Adam-like updates blow up differently in each framework
        self.conv = nn.Conv1d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.att = nn.MultiheadAttention(4, 2, bias=False, batch_first=True)
        self.out = nn.Linear(4, 1)

    def forward(self, tok, y):
        h = torch.tanh(self.bn(self.conv(self.emb(tok).transpose(1, 2)))).transpose(1, 2)
        h = self.att(h, h, h, need_weights=False)[0]
        return ((self.out(h).squeeze(-1) - y) ** 2).mean()


class MLXNet(mnn.Module):
    def __init__(self):
        super().__init__()
        self.emb = mnn.Embedding(7, 4)
        self.conv = mnn.Conv1d(4, 4, 3, padding=1, bias=False)
        self.bn = mnn.BatchNorm(4)
        self.att = mnn.MultiHeadAttention(4, 2, bias=False)
        self.out = mnn.Linear(4, 1)

    def __call__(self, tok, y):
        h = mx.tanh(self.bn(self.conv(self.emb(tok))))  # channels-last all along
        h = self.att(h, h, h)
        return ((self.out(h).squeeze(-1) - y) ** 2).mean()


def batches(n: int):
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 7, (4, 5), generator=g), torch.randn(4, 5, generator=g)) for _ in range(n)]


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
}
SCHEDULERS = {
    "StepLR": lambda o: L.StepLR(o, step_size=3, gamma=0.5),
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=10, cycle_momentum=False),
    "OneCycleLR-momentum": lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=10),
    "warmup-cosine": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=3), L.CosineAnnealingLR(o, T_max=6)], milestones=[3]
    ),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=7, eta_min=1e-4),
}
# torch itself refuses a momentum cycle for Adagrad (it has none); RMSprop's is not expressible in MLX
NO_MOMENTUM = {"Adagrad", "RMSprop"}
GRID = [(o, s) for o in OPTIMIZERS for s in SCHEDULERS if not (o in NO_MOMENTUM and s == "OneCycleLR-momentum")]


def _momentum(group: dict):
    return group["betas"][0] if "betas" in group else group.get("momentum")


def _torch_run(tmp_path, opt_name, sched_name):
    """4 steps, saved to a file and read back; the live torch objects then continue (the oracle)."""
    torch.manual_seed(0)
    model = TorchNet()
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = SCHEDULERS[sched_name](opt)
    data = batches(DONE + MORE)
    for tok, y in data[:DONE]:
        opt.zero_grad()
        model(tok, y).backward()
        opt.step()
        sched.step()
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
        tmp_path / "run.pt",
    )
    return model, opt, sched, data


@functools.cache
def _specs():
    return forward_specs(TorchNet())


def _mlx_view(model) -> dict:
    """The torch model's tensors under MLX names and layouts (the oracle's side of the comparison)."""
    return rules.apply_specs(_specs(), {k: v.detach().numpy() for k, v in model.state_dict().items()})


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


@pytest.mark.parametrize("opt_name, sched_name", GRID)
def test_plain_mlx_loop_continues_a_saved_torch_run(tmp_path, opt_name, sched_name):
    model, opt, sched, data = _torch_run(tmp_path, opt_name, sched_name)

    # The user's side: the file, a freshly built torch model for its layer types, the documented calls.
    ck = torch.load(tmp_path / "run.pt", weights_only=True)
    fresh = TorchNet()
    fresh.load_state_dict(ck["model"])
    torch2mlx.convert(fresh, tmp_path / "weights.safetensors")
    twin = MLXNet()
    twin.load_weights(list(torch2mlx.load_converted(tmp_path / "weights.safetensors").items()), strict=True)
    conv = convert_optimizer(ck["optimizer"], fresh, schedule=ck["scheduler"])
    mopt = conv.optimizer
    assert conv.report.exact, str(conv.report)

    step = mnn.value_and_grad(twin, twin.__call__)
    for tok, y in data[DONE:]:
        want_lr, want_mom = opt.param_groups[0]["lr"], _momentum(opt.param_groups[0])
        opt.zero_grad()
        model(tok, y).backward()
        opt.step()
        sched.step()
        _, grads = step(mx.array(tok.numpy()), mx.array(y.numpy()))
        mopt.update(twin, grads)
        mx.eval(twin.parameters(), mopt.state)
        assert _relative(float(mopt.learning_rate.item()), want_lr) <= 1e-6
        if want_mom is not None:
            have = mopt.betas[0] if hasattr(mopt, "betas") else getattr(mopt, "momentum", 0.0)
            assert _relative(have, want_mom) <= 1e-6

    want = _mlx_view(model)
    have = dict(tree_flatten(twin.parameters()))
    assert set(have) == set(want) and {"bn.running_mean", "bn.running_var"} <= set(have)
    gaps = {k: float(np.abs(np.array(have[k]) - np.array(want[k])).max()) for k in want}
    assert max(gaps.values()) <= 1e-5, gaps
    # the continuation really moved everything the comparison covers
    start = torch2mlx.load_converted(tmp_path / "weights.safetensors")
    assert all(float(np.abs(np.array(want[k]) - np.array(start[k])).max()) > 1e-4 for k in want)


def test_rmsprop_momentum_cycle_is_refused_not_dropped(tmp_path):
    _torch_run(tmp_path, "RMSprop", "OneCycleLR-momentum")
    ck = torch.load(tmp_path / "run.pt", weights_only=True)
    with pytest.raises(Torch2MLXError, match="RMSprop momentum"):
        convert_optimizer(ck["optimizer"], TorchNet(), schedule=ck["scheduler"])
    with pytest.warns(UserWarning, match="RMSprop momentum"):
        conv = convert_optimizer(ck["optimizer"], TorchNet(), schedule=ck["scheduler"], strict=False)
    assert not conv.report.exact


def test_sgd_step_comes_from_the_scheduler_or_is_asked_for(tmp_path):
    """SGD's state has no step count: the scheduler's position is used; a Schedule without one is refused."""
    from torch2mlx.training import convert_scheduler

    _torch_run(tmp_path, "SGD", "warmup-cosine")
    ck = torch.load(tmp_path / "run.pt", weights_only=True)
    conv = convert_optimizer(ck["optimizer"], TorchNet(), schedule=ck["scheduler"])
    assert int(conv.optimizer.step.item()) == DONE
    lost = convert_scheduler(ck["scheduler"])
    lost.start = None  # a schedule that does not say where it is
    with pytest.raises(Torch2MLXError, match="pass step="):
        convert_optimizer(ck["optimizer"], TorchNet(), schedule=lost)
    assert int(convert_optimizer(ck["optimizer"], TorchNet(), schedule=lost, step=DONE).optimizer.step.item()) == DONE


def test_a_scheduler_not_stepped_per_update_is_refused(tmp_path):
    """A per-epoch scheduler (2 steps for 8 updates) cannot become a per-update learning rate silently."""
    torch.manual_seed(0)
    model = TorchNet()
    opt = OPTIMIZERS["Adam"](model.parameters())
    sched = L.StepLR(opt, step_size=1, gamma=0.5)
    for i, (tok, y) in enumerate(batches(8)):
        opt.zero_grad()
        model(tok, y).backward()
        opt.step()
        if i % 4 == 3:
            sched.step()
    with pytest.raises(Torch2MLXError, match="the optimizer took 8 steps and the scheduler 2"):
        convert_optimizer(opt.state_dict(), model, schedule=sched.state_dict())
    conv = convert_optimizer(opt.state_dict(), model)  # without it: the rate torch is at, fixed
    assert conv.report.exact and float(conv.optimizer.learning_rate.item()) == pytest.approx(opt.param_groups[0]["lr"])


def test_fresh_moments_keep_the_schedule_position():
    """with_state=False: Adam starts its count (and bias correction) at 0, the rate where the scheduler is."""
    torch.manual_seed(0)
    model = TorchNet()
    opt = OPTIMIZERS["Adam"](model.parameters())
    sched = SCHEDULERS["warmup-cosine"](opt)
    _steps(model, opt, sched, batches(DONE))
    conv = convert_optimizer(opt, model, schedule=sched, with_state=False)
    mopt = conv.optimizer
    params = {"w": mx.zeros((2,))}
    for t in range(3):
        params = mopt.apply_gradients({"w": mx.ones((2,))}, params)
        assert int(mopt.step.item()) == t + 1
        assert _relative(float(mopt.learning_rate.item()), opt.param_groups[0]["lr"]) <= 1e-6
        opt.step()
        sched.step()


def test_param_groups_each_follow_their_cycled_beta1(tmp_path):
    """Two param groups (a MultiOptimizer) with OneCycleLR's beta1 cycle, in a plain MLX loop."""
    torch.manual_seed(0)
    model = TorchNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.1}], lr=1e-2)
    sched = L.OneCycleLR(opt, max_lr=[0.05, 0.02], total_steps=10)
    data = batches(DONE + MORE)
    _steps(model, opt, sched, data[:DONE])
    twin = MLXNet()
    twin.load_weights(list({k: mx.array(v) for k, v in _mlx_view(model).items()}.items()), strict=True)
    conv = convert_optimizer(opt, model, schedule=sched)
    assert conv.report.exact, str(conv.report)
    step = mnn.value_and_grad(twin, twin.__call__)
    for tok, y in data[DONE:]:
        applied = [g["betas"][0] for g in opt.param_groups]
        _steps(model, opt, sched, [(tok, y)])
        _, grads = step(mx.array(tok.numpy()), mx.array(y.numpy()))
        conv.optimizer.update(twin, grads)
        mx.eval(twin.parameters(), conv.optimizer.state)
        assert [o.betas[0] for o in conv.optimizer.optimizers] == pytest.approx(applied, rel=1e-12)
    want, have = _mlx_view(model), dict(tree_flatten(twin.parameters()))
    assert max(float(np.abs(np.array(have[k]) - want[k]).max()) for k in want) <= 1e-5


def _steps(model, opt, sched, data) -> None:
    for tok, y in data:
        opt.zero_grad()
        model(tok, y).backward()
        opt.step()
        sched.step()
