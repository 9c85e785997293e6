"""A torch optimizer (hyper-parameters, state and schedule) as one ready ``mlx.optimizers`` optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Torch2MLXError
from . import names as _names
from .optimizer_state import OptimizerState, _specs, check_sgd_start, convert_optimizer_state
from .optimizers import USES_STEP, infer_kind, kind_of, make
from .report import TrainingReport
from .schedules import Schedule, convert_scheduler


@dataclass
class ConvertedOptimizer:
    optimizer: object  # an mlx.optimizers.Optimizer (MultiOptimizer for several param groups)
    kind: str
    schedule: Schedule | None
    state: OptimizerState | None
    report: TrainingReport


def _mlx_groups(sd, model_or_names, rules) -> list[list[str]]:
    """MLX parameter names of each torch param group (several groups need a name filter in MLX)."""
    optimizer = sd if hasattr(sd, "param_groups") and not isinstance(sd, dict) else None
    groups = optimizer.param_groups if optimizer is not None else sd["param_groups"]
    torch_names = _names.resolve(model_or_names, groups, optimizer)
    model = model_or_names if hasattr(model_or_names, "named_parameters") else None
    specs = _specs(rules, model, torch_names, {n: () for n in torch_names})
    out, pos = [], 0
    for g in groups:
        mine = set(torch_names[pos : pos + len(g["params"])])
        pos += len(g["params"])
        out.append(sorted({s.out for s in specs if set(s.sources) & mine}))
    return out


def _step_count(kind, sd, step, schedule, loaded: bool, report: TrainingReport) -> int | None:
    """Optimizer updates already taken: ``None`` means "as the loaded state records it".

    torch's SGD keeps no step count (its update does not need one), but a schedule does:
    then the scheduler's own position says it. A fresh Adam/Adagrad starts at 0 whatever
    the scheduler says (its bias correction counts the moments' steps, not the schedule's).
    """
    if step is not None:
        return int(step)
    if loaded and any("step" in s for s in sd["state"].values()):
        return None
    if kind in USES_STEP or schedule is None:
        return 0  # fresh moments; or nothing depends on the count
    if schedule.start is None:
        report.inexact.append(
            f"neither the {kind} state nor the schedule says how many steps were taken, so the "
            "schedule's position is not known: pass step="
        )
        return 0
    return schedule.start


def _set_step(opt, n: int) -> None:
    import mlx.core as mx

    for o in getattr(opt, "optimizers", [opt]):
        o.state["step"] = mx.array(n, dtype=mx.uint64)


def convert_optimizer(
    torch_optimizer_or_state,
    model_or_param_names=None,
    rules=None,
    *,
    kind: str | None = None,
    schedule=None,
    with_state: bool = True,
    step: int | None = None,
    strict: bool = True,
) -> ConvertedOptimizer:
    """An MLX optimizer equal to a torch one: hyper-parameters, moments and (optionally) LR schedule.

    ``torch_optimizer_or_state``: a live optimizer or its ``state_dict()``. ``schedule``: a
    torch LR scheduler, its state dict or a converted ``Schedule``; it becomes the MLX
    optimizer's ``learning_rate`` (stepped with every update, as a scheduler with
    ``interval="step"``), continuing from the scheduler's position. A schedule that cycles
    beta1 or SGD's momentum (OneCycleLR's ``cycle_momentum``) is followed too: the optimizer
    sets it before every update. ``step``: updates already taken (default: the optimizer
    state's count; SGD keeps none, so the scheduler's ``last_epoch``). Several param groups
    become an ``mlx.optimizers.MultiOptimizer`` whose filters select each group's MLX
    parameters (needs the model or names). What would make the continued run differ from
    torch is in ``.report``; with ``strict`` (the default) it raises, otherwise it warns.
    """
    import mlx.optimizers as optim

    live = hasattr(torch_optimizer_or_state, "param_groups") and not isinstance(torch_optimizer_or_state, dict)
    sd = torch_optimizer_or_state.state_dict() if live else torch_optimizer_or_state
    if not isinstance(sd, dict) or "param_groups" not in sd:
        raise Torch2MLXError("expected a torch optimizer or its state_dict() ({'state': ..., 'param_groups': ...})")
    groups = sd["param_groups"]
    kind = kind or (kind_of(torch_optimizer_or_state) if live else infer_kind(groups, sd.get("state")))
    report = TrainingReport()
    if schedule is not None and not isinstance(schedule, Schedule):
        schedule = convert_scheduler(schedule, param_groups=groups, strict=None)
    if schedule is not None:
        report.extend(schedule.report)
        if len(schedule.groups) != len(groups):
            raise Torch2MLXError(f"the schedule has {len(schedule.groups)} group(s), the optimizer {len(groups)}")
    loaded = bool(with_state and sd.get("state"))
    later = TrainingReport()  # the state's findings, listed after the hyper-parameters'
    n_step = _step_count(kind, sd, step, schedule, loaded, later)
    state = None
    if loaded:
        state = convert_optimizer_state(
            torch_optimizer_or_state, model_or_param_names, rules, kind=kind, step=n_step, strict=None
        )
        later.extend(state.report)
        if n_step is None and schedule is not None and schedule.start is not None and state.step != schedule.start:
            later.inexact.append(
                f"the optimizer took {state.step} steps and the scheduler {schedule.start}: it "
                "did not step once per update, as the converted learning rate does (a per-epoch "
                "scheduler: convert without schedule= and set optimizer.learning_rate = "
                "sched.lr(epoch) each epoch, or use MLXTrainer)"
            )
        n_step = state.step
    elif kind == "SGD":
        check_sgd_start(kind, sd, {}, [None], later)
    elif kind == "Adagrad" and any(float(g.get("initial_accumulator_value", 0)) for g in groups):
        later.inexact.append(
            "Adagrad initial_accumulator_value is carried by the state, and there is none: MLX starts the sums at zero"
        )
    opts = []
    for i, g in enumerate(groups):
        if schedule is None:
            opts.append(make(kind, g, float(g["lr"]), report))
            continue
        sched = schedule.group(i)
        if sched.start is not None:
            sched = sched.resumed(at=n_step)  # the next update uses the rate the scheduler is at
        opts.append(make(kind, g, sched, report, sched.momentum[0] if sched.momentum else None, sched.momentum_key))
    if len(opts) == 1:
        opt = opts[0]
    else:
        if model_or_param_names is None:
            raise Torch2MLXError(f"{len(groups)} param groups: pass the model so each MLX group gets its parameters")
        members = [set(m) for m in _mlx_groups(torch_optimizer_or_state, model_or_param_names, rules)]
        filters = [lambda path, _, m=m: path in m for m in members[:-1]]
        opt = optim.MultiOptimizer(opts, filters)
    report.extend(later)
    if state is not None:
        opt.state = state.state
    elif n_step:
        _set_step(opt, n_step)
    report.check(strict, f"the {kind} optimizer")
    return ConvertedOptimizer(opt, kind, schedule, state, report)
