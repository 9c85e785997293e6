"""torch LR schedulers as MLX schedules: the rate MLX applies equals torch's for 1,000 steps (<= 1e-7 relative).

torch is the oracle: a scheduler steps next to an MLX optimizer whose ``learning_rate`` is the
converted schedule, and after every update MLX's rate (float32) is compared with torch's.
"""

from __future__ import annotations

import warnings

import mlx.core as mx
import mlx.optimizers as optim
import pytest
import torch
from torch.optim import lr_scheduler as L

from torch2mlx.errors import Torch2MLXError
from torch2mlx.training import convert_scheduler, read_training_checkpoint

STEPS = 1000


def _opt(lr=0.1, kind="sgd"):
    p = [torch.zeros(1, requires_grad=True)]
    return torch.optim.SGD(p, lr=lr, momentum=0.9) if kind == "sgd" else torch.optim.Adam(p, lr=lr)


def _sequential():
    o = _opt()
    return L.SequentialLR(
        o,
        [L.LinearLR(o, 0.01, total_iters=50), L.CosineAnnealingLR(o, 300, eta_min=1e-4), L.ExponentialLR(o, 0.99)],
        milestones=[50, 400],
    )


def _warmup_step():
    o = _opt(kind="adam")
    return L.SequentialLR(o, [L.ConstantLR(o, 0.1, total_iters=20), L.MultiStepLR(o, [100, 100, 700], 0.3)], [20])


SCHEDULERS = {
    "StepLR": lambda: L.StepLR(_opt(), 7, 0.7),
    "MultiStepLR": lambda: L.MultiStepLR(_opt(), [10, 10, 300], 0.5),  # a repeated milestone decays twice
    "ExponentialLR": lambda: L.ExponentialLR(_opt(), 0.995),
    "CosineAnnealingLR": lambda: L.CosineAnnealingLR(_opt(), 137),  # past T_max: torch keeps cycling
    "CosineAnnealingLR-eta": lambda: L.CosineAnnealingLR(_opt(), 100, eta_min=1e-3),
    "LinearLR": lambda: L.LinearLR(_opt(), 0.1, 1.0, 200),
    "ConstantLR": lambda: L.ConstantLR(_opt(), 0.25, 30),
    "PolynomialLR": lambda: L.PolynomialLR(_opt(), 600, 2.0),
    "OneCycleLR": lambda: L.OneCycleLR(_opt(), 0.5, total_steps=STEPS + 1),
    "OneCycleLR-3-linear": lambda: L.OneCycleLR(
        _opt(kind="adam"), 0.5, total_steps=STEPS + 1, three_phase=True, anneal_strategy="linear"
    ),
    "SequentialLR": _sequential,
    "SequentialLR-warmup": _warmup_step,
}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


def _run(sched, schedule, steps=STEPS):
    """Step torch's scheduler and an MLX optimizer driven by ``schedule``; the worst relative gap."""
    mopt = optim.SGD(learning_rate=schedule)
    params = {"w": mx.zeros((1,))}
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            want = sched.get_last_lr()[0]
            params = mopt.apply_gradients({"w": mx.ones((1,))}, params)
            worst = max(worst, _rel(float(mopt.learning_rate.item()), want))
            sched.optimizer.step()
            sched.step()
    return worst


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.slow
def test_live_scheduler_matches_torch_for_1000_steps(name):
    sched = SCHEDULERS[name]()
    schedule = convert_scheduler(sched)
    assert schedule.kind == name.split("-")[0] and schedule.start == 0
    assert _run(sched, schedule) <= 1e-7


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_state_dict_in_double_precision_matches_torch(name):
    """From ``state_dict()`` alone (kind told by its keys): torch's rates to ~1e-12, the last stretch resumed."""
    sched = SCHEDULERS[name]()
    groups = sched.optimizer.param_groups
    schedule = convert_scheduler(sched.state_dict(), param_groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(700):
            assert _rel(schedule.lr(t), sched.get_last_lr()[0]) <= 1e-12, t
            sched.optimizer.step()
            sched.step()
    resumed = convert_scheduler(sched.state_dict(), param_groups=groups)
    assert resumed.start == 700
    assert _run(sched, resumed.resumed(), steps=STEPS - 700) <= 1e-7


def test_two_param_groups_each_get_their_rate():
    p1, p2 = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    o = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.02}])
    sched = L.OneCycleLR(o, [0.5, 0.05], total_steps=100)
    schedule = convert_scheduler(sched)
    for t in range(100):
        assert [_rel(schedule.lr(t, g), sched.get_last_lr()[g]) for g in (0, 1)] == [0.0, 0.0]
        o.step()
        sched.step()
    with pytest.raises(Torch2MLXError, match=r"schedule.group\(i\)"):
        schedule(0)
    assert float(schedule.group(1)(100).item()) == pytest.approx(sched.get_last_lr()[1], rel=1e-7)


def test_one_cycle_momentum_is_carried_as_a_schedule():
    o = _opt(kind="adam")
    sched = L.OneCycleLR(o, 0.5, total_steps=50)
    schedule = convert_scheduler(sched)
    assert schedule.momentum_key == "betas"
    for t in range(50):
        assert schedule.momentum[0](t) == pytest.approx(o.param_groups[0]["betas"][0], rel=1e-12)
        o.step()
        sched.step()
    assert any("cycles beta1" in n for n in schedule.report.notes)


def test_lightning_checkpoint_schedule_read_without_torch(tmp_path):
    """Lightning's ``lr_schedulers`` entry as the restricted unpickler reads it (a Counter stays inert)."""
    sched = L.MultiStepLR(_opt(), [3, 3, 9], 0.5)
    for _ in range(5):
        sched.optimizer.step()
        sched.step()
    torch.save(
        {
            "state_dict": {"w": torch.zeros(1)},
            "lr_schedulers": [sched.state_dict()],
            "optimizer_states": [sched.optimizer.state_dict()],
        },
        tmp_path / "run.ckpt",
    )
    ck = read_training_checkpoint(tmp_path / "run.ckpt")
    schedule = convert_scheduler(ck.lr_schedulers[0])
    assert schedule.kind == "MultiStepLR" and schedule.start == 5
    assert [schedule.lr(t) for t in (0, 2, 3, 8, 9, 20)] == [0.1, 0.1, 0.025, 0.025, 0.0125, 0.0125]


@pytest.mark.parametrize(
    "make, alternative",
    [
        (lambda o: L.LambdaLR(o, lambda e: 0.9**e), "MLX schedule"),
        (lambda o: L.MultiplicativeLR(o, lambda e: 0.9), "MLX schedule"),
        (lambda o: L.ReduceLROnPlateau(o), "torch2mlx.lightning.ReduceLROnPlateau"),
        (lambda o: L.CyclicLR(o, 0.01, 0.1), "join_schedules"),
        (lambda o: L.CosineAnnealingWarmRestarts(o, 5), "join_schedules"),
        (lambda o: L.ChainedScheduler([L.ExponentialLR(o, 0.9)]), "SequentialLR"),
    ],
)
def test_unsupported_schedulers_name_an_alternative(make, alternative):
    sched = make(_opt())
    for x in (sched, sched.state_dict()):
        with pytest.raises(Torch2MLXError, match=alternative):
            convert_scheduler(x)


def test_one_cycle_state_needs_param_groups_and_ambiguous_state_needs_kind():
    sched = L.OneCycleLR(_opt(), 0.5, total_steps=10)
    with pytest.raises(Torch2MLXError, match="param_groups="):
        convert_scheduler(sched.state_dict())
    with pytest.raises(Torch2MLXError, match="pass kind="):
        convert_scheduler({"last_epoch": 3})
    with pytest.raises(Torch2MLXError, match="made for 10 steps"):
        convert_scheduler(sched).lr(11)


def test_a_momentum_cycle_that_cannot_be_followed_is_an_error_not_a_note():
    o = _opt(kind="adam")
    sched = L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=3), L.OneCycleLR(o, 0.5, total_steps=20)], [3])
    with pytest.raises(Torch2MLXError, match="cycles momentum, which is not carried"):
        convert_scheduler(sched)
    with pytest.warns(UserWarning, match="cycles momentum"):
        assert not convert_scheduler(sched, strict=False).report.exact
