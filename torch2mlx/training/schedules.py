"""torch LR schedulers as MLX schedules: ``convert_scheduler(scheduler_or_state)``.

A converted schedule is the scheduler's closed form, evaluated in double
precision as torch does (torch keeps learning rates as Python floats). MLX's
own schedules compute in float32, where ``0.95 ** 1000`` is already off by
~3e-5 relative; here only the final value is rounded to float32, so the
learning rate MLX applies is torch's within 6e-8 relative.

Steps are counted as torch counts them: ``lr(t)`` is the learning rate after
``t`` calls of ``scheduler.step()`` (``last_epoch == t``), which is the rate
torch uses for optimizer step ``t`` when the scheduler steps once per
optimizer step. MLX calls a schedule with its optimizer's step count before
incrementing it, so ``learning_rate=schedule`` lines the two up.

Input: a live scheduler (its optimizer's param groups come along), or a
``state_dict()`` as Lightning stores it in ``checkpoint["lr_schedulers"]``;
the kind is read from the state's keys (or given as ``kind``), and OneCycleLR
needs the optimizer's ``param_groups`` (its peak and floor rates live there).
Nothing here imports torch.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable

from ..errors import Torch2MLXError
from .report import TrainingReport

_CODE = (
    "its lr_lambda is Python code that neither a state dict nor a checkpoint holds; write the same "
    "function as an MLX schedule (a callable step -> learning rate, e.g. `lambda step: base_lr * f(step)`) "
    "and pass it as learning_rate"
)
UNSUPPORTED = {
    "LambdaLR": _CODE,
    "MultiplicativeLR": _CODE,
    "ReduceLROnPlateau": "it follows a validation metric, not the step count; use "
    "torch2mlx.lightning.ReduceLROnPlateau, an MLXTrainer callback that does the same from "
    "the logged metric",
    "CyclicLR": "not converted; build the cycle from mlx.optimizers.linear_schedule pieces with join_schedules",
    "CosineAnnealingWarmRestarts": "not converted; join mlx.optimizers.cosine_decay pieces with join_schedules",
    "ChainedScheduler": "not converted; write the warmup chain as SequentialLR (e.g. LinearLR then "
    "CosineAnnealingLR), which converts exactly",
}
SUPPORTED = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "ConstantLR",
    "OneCycleLR",
    "PolynomialLR",
    "SequentialLR",
)


@dataclass
class Schedule:
    """Learning rate per param group as a function of torch's step count; callable as an MLX schedule."""

    kind: str
    groups: list[Callable[[int], float]]
    start: int | None = None  # steps the scheduler had taken (its ``last_epoch``); None: not known
    momentum: list[Callable[[int], float]] | None = None  # OneCycleLR's cycled momentum / beta1
    momentum_key: str | None = None  # "betas" (beta1) or "momentum"
    report: TrainingReport = field(default_factory=TrainingReport)

    def lr(self, t: int, group: int = 0) -> float:
        """torch's learning rate of ``group`` after ``t`` scheduler steps, in double precision."""
        return self.groups[group](int(t))

    def __call__(self, step):
        """The MLX schedule interface: ``step`` (an int or a scalar mx.array) -> float32 mx.array.

        Reads the step's value on the host, so call it outside ``mx.compile``.
        """
        import mlx.core as mx

        if len(self.groups) != 1:
            raise Torch2MLXError(
                f"this {self.kind} has {len(self.groups)} param groups; use schedule.group(i) for each"
            )
        return mx.array(self.groups[0](int(step)), dtype=mx.float32)

    def group(self, i: int) -> "Schedule":
        mom = [self.momentum[i]] if self.momentum else None
        return Schedule(self.kind, [self.groups[i]], self.start, mom, self.momentum_key, self.report)

    def resumed(self, at: int = 0) -> "Schedule":
        """The same schedule counted so that step ``at`` is where the scheduler stopped (``start``).

        For an MLX optimizer whose step count differs from the scheduler's (one starting at 0
        while the torch scheduler had already stepped; an optimizer restored with the same
        count as the scheduler needs no shift).
        """
        if self.start is None:
            raise Torch2MLXError(f"this {self.kind} schedule does not say how many steps it took (start is None)")
        k = self.start - int(at)
        if k == 0:
            return self
        mom = [lambda t, f=f: f(t + k) for f in self.momentum] if self.momentum else None
        return Schedule(
            self.kind, [lambda t, f=f: f(t + k) for f in self.groups], int(at), mom, self.momentum_key, self.report
        )


def infer_kind(state: dict) -> str:
    """The scheduler class a state dict came from, told by its keys (torch stores no class name)."""
    keys = set(state)
    for kind, marks in (
        ("SequentialLR", {"_schedulers", "_milestones"}),
        ("ChainedScheduler", {"_schedulers"}),
        ("ReduceLROnPlateau", {"patience"}),
        ("OneCycleLR", {"total_steps", "_schedule_phases"}),
        ("CyclicLR", {"max_lrs"}),
        ("CosineAnnealingWarmRestarts", {"T_0"}),
        ("LambdaLR", {"lr_lambdas"}),
        ("StepLR", {"step_size"}),
        ("MultiStepLR", {"milestones"}),
        ("CosineAnnealingLR", {"T_max"}),
        ("LinearLR", {"start_factor"}),
        ("PolynomialLR", {"power"}),
        ("ConstantLR", {"factor", "total_iters"}),
        ("ExponentialLR", {"gamma", "base_lrs"}),
    ):
        if marks <= keys:
            return kind
    raise Torch2MLXError(
        f"cannot tell which LR scheduler this state dict is from (keys: {sorted(keys)}); "
        "pass kind='StepLR' (or another class name)"
    )


def _counts(milestones) -> dict[int, int]:
    """MultiStepLR's milestones: a Counter (an inert placeholder when read without torch) or a list."""
    if isinstance(milestones, (list, tuple)):
        out: dict[int, int] = {}
        for m in milestones:
            out[int(m)] = out.get(int(m), 0) + 1
        return out
    args = getattr(milestones, "_t2m_args", None)  # collections.Counter as our unpickler keeps it
    if args and isinstance(args[0], dict):
        milestones = args[0]
    if isinstance(milestones, dict):
        return {int(k): int(v) for k, v in milestones.items()}
    raise Torch2MLXError(f"MultiStepLR milestones of type {type(milestones).__name__} are not understood")


def _step_lr(b, st):
    size, gamma = int(st["step_size"]), float(st["gamma"])
    return lambda t: b * gamma ** (t // size)


def _multistep_lr(b, st):
    ms, gamma = sorted(_counts(st["milestones"]).items()), float(st["gamma"])
    # a milestone listed twice decays twice, as torch's Counter does
    return lambda t: b * gamma ** sum(c for m, c in ms if m <= t)


def _exponential_lr(b, st):
    gamma = float(st["gamma"])
    return lambda t: b * gamma**t


def _cosine_lr(b, st):
    T, eta = st["T_max"], float(st["eta_min"])
    # torch steps a recursive form; past T_max it keeps following the cosine, which this closed form does too
    return lambda t: eta + (b - eta) * (1 + math.cos(math.pi * t / T)) / 2


def _linear_lr(b, st):
    s, e, n = float(st["start_factor"]), float(st["end_factor"]), int(st["total_iters"])
    return lambda t: b * (s + (e - s) * min(t, n) / n)


def _constant_lr(b, st):
    f, n = float(st["factor"]), int(st["total_iters"])
    return lambda t: b * f if t < n else b


def _polynomial_lr(b, st):
    n, p = int(st["total_iters"]), float(st["power"])
    return lambda t: b * (1.0 - min(t, n) / n) ** p


_SIMPLE = {
    "StepLR": _step_lr,
    "MultiStepLR": _multistep_lr,
    "ExponentialLR": _exponential_lr,
    "CosineAnnealingLR": _cosine_lr,
    "LinearLR": _linear_lr,
    "ConstantLR": _constant_lr,
    "PolynomialLR": _polynomial_lr,
}


def _anneal(kind: str):
    if kind == "cos":
        return lambda a, b, pct: b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
    if kind == "linear":
        return lambda a, b, pct: (b - a) * pct + a
    raise Torch2MLXError(f"OneCycleLR anneal strategy {kind!r} is not known")


def _one_cycle(st, group: dict, value: str) -> Callable[[int], float]:
    """OneCycleLR's piecewise anneal for one group; ``value`` is "lr" or "momentum" (the phase keys' suffix)."""
    phases = [
        (float(p["end_step"]), group[p[f"start_{value}"]], group[p[f"end_{value}"]]) for p in st["_schedule_phases"]
    ]
    anneal = _anneal(st.get("_anneal_func_type", "cos"))
    total = int(st["total_steps"])

    def f(t):
        if t > total:
            raise Torch2MLXError(f"OneCycleLR stepped {t} times; it was made for {total} steps (torch raises too)")
        start = 0.0
        for i, (end, a, b) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                return anneal(a, b, (t - start) / (end - start))
            start = end

    return f


def _groups_needed(param_groups, kind: str, n: int) -> list[dict]:
    if param_groups is None:
        raise Torch2MLXError(
            f"{kind} keeps its peak and floor rates in the optimizer's param groups: pass "
            "param_groups= (checkpoint['optimizer_states'][0]['param_groups']) or the live scheduler"
        )
    if len(param_groups) != n:
        raise Torch2MLXError(f"{kind} has {n} base rate(s) but {len(param_groups)} param group(s) were given")
    return list(param_groups)


def _build(kind: str, st: dict, param_groups, children, report: TrainingReport) -> Schedule:
    if kind in UNSUPPORTED:
        raise Torch2MLXError(f"{kind} cannot be converted: {UNSUPPORTED[kind]}")
    start = int(st["last_epoch"])  # torch always saves it; without it the position would be a guess
    if kind in _SIMPLE:
        return Schedule(kind, [_SIMPLE[kind](float(b), st) for b in st["base_lrs"]], start, report=report)
    if kind == "OneCycleLR":
        groups = _groups_needed(param_groups, kind, len(st["base_lrs"]))
        sched = Schedule(kind, [_one_cycle(st, g, "lr") for g in groups], start, report=report)
        if st.get("cycle_momentum"):
            sched.momentum = [_one_cycle(st, g, "momentum") for g in groups]
            sched.momentum_key = "betas" if st.get("use_beta1") else "momentum"
            what = "beta1" if st.get("use_beta1") else "momentum"
            report.notes.append(
                f"OneCycleLR also cycles {what} (schedule.momentum): the optimizer "
                "convert_optimizer(schedule=...) returns sets it before every update, as "
                f"MLXTrainer does; an MLX optimizer given only this learning rate keeps {what} fixed"
            )
        return sched
    if kind == "SequentialLR":
        milestones = [int(m) for m in st["_milestones"]]
        subs = [_build(*_parts(c, None, param_groups), report) for c in children]
        if len(subs) != len(milestones) + 1:
            raise Torch2MLXError(f"SequentialLR has {len(subs)} schedulers for {len(milestones)} milestones")

        def piece(g):
            # torch restarts scheduler i at its closed form's step 0 on milestone i (join_schedules' rule)
            def f(t):
                i = bisect_right(milestones, t)
                return subs[i].groups[g](t - (milestones[i - 1] if i else 0))

            return f

        sched = Schedule(kind, [piece(g) for g in range(len(subs[0].groups))], start, report=report)
        moms = [s for s in subs if s.momentum]
        if moms:
            report.inexact.append("a OneCycleLR inside SequentialLR cycles momentum, which is not carried")
        return sched
    raise Torch2MLXError(f"LR scheduler {kind!r} is not known (supported: {', '.join(SUPPORTED)})")


def _parts(x, kind, param_groups):
    """``(kind, state, param_groups, children)`` of a live scheduler or a state dict."""
    if isinstance(x, dict):
        kind = kind or infer_kind(x)
        return kind, x, param_groups, list(x.get("_schedulers", []))
    if hasattr(x, "state_dict") and hasattr(x, "optimizer"):
        names = [c.__name__ for c in type(x).__mro__]
        kind = kind or next((n for n in names if n in SUPPORTED or n in UNSUPPORTED), type(x).__name__)
        if kind in UNSUPPORTED:
            return kind, {}, None, []
        st = x.state_dict()
        groups = param_groups or [{k: v for k, v in g.items() if k != "params"} for g in x.optimizer.param_groups]
        return kind, st, groups, list(getattr(x, "_schedulers", []))
    raise Torch2MLXError(f"expected a torch LR scheduler or its state_dict(), got {type(x).__name__}")


def convert_scheduler(
    scheduler_or_state, *, kind: str | None = None, param_groups=None, strict: bool = True
) -> Schedule:
    """An MLX schedule equal to a torch LR scheduler (see the module doc).

    ``scheduler_or_state``: a live ``torch.optim.lr_scheduler`` object or its ``state_dict()``;
    ``kind``: the class name when a state dict's keys are ambiguous; ``param_groups``: the
    optimizer's groups (needed by OneCycleLR from a state dict). The result's ``start``
    is the number of steps already taken; ``schedule.lr(t, group)`` gives torch's rate
    in double precision and ``schedule(step)`` MLX's float32 one. What the schedule cannot carry
    is in ``.report``; with ``strict`` (the default) it raises, otherwise it warns.
    """
    k, st, groups, children = _parts(scheduler_or_state, kind, param_groups)
    try:
        sched = _build(k, st, groups, children, TrainingReport())
    except (KeyError, TypeError, ValueError) as e:
        raise Torch2MLXError(f"{k} state is missing or has a malformed field ({type(e).__name__}: {e})") from None
    sched.report.check(strict, f"the {k} schedule")
    return sched
