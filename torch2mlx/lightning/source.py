"""What an MLXModule takes from the torch LightningModule it continues: weights, optimizer, schedule.

The torch module is only inspected: built on the meta device from the
checkpoint's hyper-parameters (no weights allocated), analyzed for the exact
per-tensor rules, and asked for its ``configure_optimizers()``, whose torch
optimizer and scheduler are converted (torch.optim -> mlx.optimizers, the
scheduler -> a ``Schedule``). Tensor values always come from the checkpoint,
read without torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from ..errors import Torch2MLXError
from ..training.report import TrainingReport


@dataclass
class OptimConfig:
    """What ``MLXModule.configure_optimizers`` returns, normalized: the trainer's view of it."""

    optimizer: object
    schedule: object = None  # a Schedule or any callable count -> learning rate
    interval: str = "epoch"  # Lightning's default: the scheduler steps once per epoch
    frequency: int = 1
    start: int = 0  # scheduler steps already taken (a resumed run)
    report: TrainingReport = field(default_factory=TrainingReport)


def normalize(out) -> OptimConfig:
    """Lightning's ``configure_optimizers`` return forms (MLX objects inside) as an ``OptimConfig``."""
    if isinstance(out, OptimConfig):
        return out
    sched_cfg = None
    if isinstance(out, dict):
        opt, sched_cfg = out.get("optimizer"), out.get("lr_scheduler")
    elif isinstance(out, (list, tuple)) and len(out) == 2 and isinstance(out[0], (list, tuple)):
        opts, scheds = out
        if len(opts) != 1 or len(scheds) > 1:
            raise Torch2MLXError(
                "MLXTrainer runs one optimizer (with at most one scheduler); "
                f"configure_optimizers gave {len(opts)} and {len(scheds)}"
            )
        opt, sched_cfg = opts[0], (scheds[0] if scheds else None)
    elif isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise Torch2MLXError(f"MLXTrainer runs one optimizer; configure_optimizers gave {len(out)}")
        return normalize(out[0])
    else:
        opt = out
    if opt is None:
        raise Torch2MLXError("configure_optimizers returned no optimizer")
    if sched_cfg is None:
        return OptimConfig(opt)
    if not isinstance(sched_cfg, dict):
        sched_cfg = {"scheduler": sched_cfg}
    interval = sched_cfg.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise Torch2MLXError(f"lr_scheduler interval must be 'epoch' or 'step', got {interval!r}")
    schedule = sched_cfg["scheduler"]
    return OptimConfig(
        opt,
        schedule,
        interval,
        int(sched_cfg.get("frequency", 1)),
        int(sched_cfg.get("start", getattr(schedule, "start", 0))),
    )


def torch_optim(module):
    """``(optimizer, scheduler or None, interval, frequency)`` from a torch module's ``configure_optimizers``."""
    if not hasattr(module, "configure_optimizers"):
        raise Torch2MLXError(f"{type(module).__name__} has no configure_optimizers; give the MLX module its own")
    try:
        out = module.configure_optimizers()
    except Exception as e:  # the user's code, run outside a Trainer (e.g. it reads self.trainer)
        raise Torch2MLXError(
            f"{type(module).__name__}.configure_optimizers() failed outside a Lightning Trainer "
            f"({type(e).__name__}: {e}); override configure_optimizers in the MLX module"
        ) from None
    cfg = normalize(out)
    return cfg.optimizer, cfg.schedule, cfg.interval, cfg.frequency


def convert_config(module, specs, optimizer_state=None, scheduler_state=None, *, strict=True) -> OptimConfig:
    """The MLX optimizer and schedule equal to ``module.configure_optimizers()``, state restored if given."""
    from ..training import names as _names
    from ..training.convert import convert_optimizer
    from ..training.optimizers import kind_of
    from ..training.schedules import convert_scheduler

    topt, tsched, interval, frequency = torch_optim(module)
    names = _names.from_module(module, topt)
    source = optimizer_state if optimizer_state is not None else topt
    groups = source["param_groups"] if isinstance(source, dict) else topt.param_groups
    schedule = None
    if tsched is not None:
        if scheduler_state is not None:
            tsched.load_state_dict(scheduler_state)  # the checkpoint's counters on a freshly built scheduler
        schedule = convert_scheduler(tsched, param_groups=groups, strict=None)
    conv = convert_optimizer(source, names, specs, kind=kind_of(topt), strict=None)
    report = conv.report
    if schedule is not None:
        report.extend(schedule.report)
    report.check(strict, f"{type(module).__name__}'s optimizer")
    return OptimConfig(conv.optimizer, schedule, interval, frequency, schedule.start if schedule else 0, report)


def build_meta(source_class, hyper_parameters: dict):
    """The torch module on the meta device, constructed from the checkpoint's hyper-parameters."""
    import torch

    sig = inspect.signature(source_class.__init__)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in hyper_parameters.items() if takes_all or k in sig.parameters}
    try:
        with torch.device("meta"):
            return source_class(**kwargs)
    except Exception as e:  # the user's constructor
        raise Torch2MLXError(
            f"{source_class.__name__}(**{kwargs}) failed on the meta device ({type(e).__name__}: {e})"
        ) from None


def mlx_weights(specs, tensors: dict) -> dict:
    """``{MLX name: mx.array}`` from ``{torch name: Array}`` by the specs (arithmetic rules in float32)."""
    import mlx.core as mx
    import numpy as np

    from ..core import rules
    from ..core.casts import to_f32

    out = {}
    for s in specs:
        try:
            srcs = [tensors[n] for n in s.sources]
        except KeyError as e:
            raise Torch2MLXError(f"{s.out}: the checkpoint has no tensor {e}") from None
        rule = rules.get(s.rule)
        if rule.arithmetic and not srcs[0].dtype.exact_numpy:
            data = rule.forward([to_f32(a.data, a.dtype) for a in srcs], dict(s.args))
            out[s.out] = mx.array(np.ascontiguousarray(data)).astype(getattr(mx, srcs[0].dtype.name))
        else:
            data = rule.forward([a.data for a in srcs], dict(s.args))
            out[s.out] = srcs[0].with_data(np.ascontiguousarray(data)).to_mlx()
    return out
