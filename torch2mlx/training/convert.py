"""A torch optimizer (hyper-parameters, state and schedule) as one ready ``mlx.optimizers`` optimizer."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Torch2MLXError
from . import names as _names
from .optimizer_state import OptimizerState, _specs, check_sgd_start, convert_optimizer_state
from .optimizers import infer_kind, kind_of, make
from .report import Report
from .schedules import Schedule, convert_scheduler


@dataclass
class ConvertedOptimizer:
    optimizer: object                 # an mlx.optimizers.Optimizer (MultiOptimizer for several param groups)
    kind: str
    schedule: Schedule | None
    state: OptimizerState | None
    report: Report


def _mlx_groups(sd, model_or_names, rules) -> list[list[str]]:
    """MLX parameter names of each torch param group (several groups need a name filter in MLX)."""
    optimizer = sd if hasattr(sd, "param_groups") and not isinstance(sd, dict) else None
    groups = optimizer.param_groups if optimizer is not None else sd["param_groups"]
    torch_names = _names.resolve(model_or_names, groups, optimizer)
    model = model_or_names if hasattr(model_or_names, "named_parameters") else None
    specs = _specs(rules, model, torch_names, {n: () for n in torch_names})
    out, pos = [], 0
    for g in groups:
        mine = set(torch_names[pos:pos + len(g["params"])])
        pos += len(g["params"])
        out.append(sorted({s.out for s in specs if set(s.sources) & mine}))
    return out


def convert_optimizer(torch_optimizer_or_state, model_or_param_names=None, rules=None, *, kind: str | None = None,
                      schedule=None, with_state: bool = True, step: int | None = None,
                      strict: bool = True) -> ConvertedOptimizer:
    """An MLX optimizer equal to a torch one: hyper-parameters, moments and (optionally) LR schedule.

    ``torch_optimizer_or_state``: a live optimizer or its ``state_dict()``. ``schedule``: a
    torch LR scheduler, its state dict or a converted ``Schedule``; it becomes the MLX
    optimizer's ``learning_rate`` (stepped with every update, as a scheduler with
    ``interval="step"``). Several param groups become an ``mlx.optimizers.MultiOptimizer``
    whose filters select each group's MLX parameters (needs the model or names).
    Differences MLX cannot express are in ``.report``; with ``strict`` they raise.
    """
    import mlx.optimizers as optim
    live = hasattr(torch_optimizer_or_state, "param_groups") and not isinstance(torch_optimizer_or_state, dict)
    sd = torch_optimizer_or_state.state_dict() if live else torch_optimizer_or_state
    if not isinstance(sd, dict) or "param_groups" not in sd:
        raise Torch2MLXError("expected a torch optimizer or its state_dict() ({'state': ..., 'param_groups': ...})")
    groups = sd["param_groups"]
    kind = kind or (kind_of(torch_optimizer_or_state) if live else infer_kind(groups, sd.get("state")))
    report = Report()
    if schedule is not None and not isinstance(schedule, Schedule):
        schedule = convert_scheduler(schedule, param_groups=groups)
    if schedule is not None:
        report.extend(schedule.report)
        if len(schedule.groups) != len(groups):
            raise Torch2MLXError(f"the schedule has {len(schedule.groups)} group(s), the optimizer {len(groups)}")
    opts = [make(kind, g, schedule.group(i) if schedule is not None else float(g["lr"]), report)
            for i, g in enumerate(groups)]
    if len(opts) == 1:
        opt = opts[0]
    else:
        if model_or_param_names is None:
            raise Torch2MLXError(f"{len(groups)} param groups: pass the model so each MLX group gets its parameters")
        members = [set(m) for m in _mlx_groups(torch_optimizer_or_state, model_or_param_names, rules)]
        filters = [lambda path, _, m=m: path in m for m in members[:-1]]
        opt = optim.MultiOptimizer(opts, filters)
    state = None
    if with_state and sd.get("state"):
        state = convert_optimizer_state(torch_optimizer_or_state, model_or_param_names, rules, kind=kind, step=step,
                                        strict=False)
        report.extend(state.report)
        opt.state = state.state
    elif kind == "SGD":
        check_sgd_start(kind, sd, {}, [None], report)
    elif kind == "Adagrad" and any(float(g.get("initial_accumulator_value", 0)) for g in groups):
        report.inexact.append("Adagrad initial_accumulator_value is carried by the state, and there is none: "
                              "MLX starts the sums at zero")
    report.check(strict, f"the {kind} optimizer")
    return ConvertedOptimizer(opt, kind, schedule, state, report)
