"""torch.optim hyper-parameters as ``mlx.optimizers`` constructors, and where the update equations differ.

Compared line by line with torch 2.x's single-tensor updates and MLX 0.2x's
``apply_single``:

- Adam: torch always bias-corrects; MLX only with ``bias_correction=True``
  (default False), which we always pass. Then both compute
  ``p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (MLX in float32, torch
  with the step size in double). torch's ``weight_decay`` on Adam is an L2 term
  added to the gradient; MLX's Adam has none (carried, see below). ``amsgrad``
  has no MLX counterpart (reported).
- AdamW: both multiply the parameter by ``1 - lr*weight_decay`` before the Adam
  step: identical. torch's ``Adam(decoupled_weight_decay=True)`` is AdamW.
- SGD: identical for momentum, weight decay and Nesterov, except the very first
  momentum step with ``dampening > 0``: torch stores the raw gradient as the
  first buffer, MLX damps it. Exact once a buffer exists (carried from torch's
  state); reported when it does not.
- RMSprop: ``v = alpha*v + (1-alpha)*g^2``, ``p -= lr*g/(sqrt(v)+eps)`` in both
  (eps outside the root in both). ``centered`` and ``momentum`` have no MLX
  counterpart (reported).
- Adagrad: same accumulator and ``eps`` placement; torch's default eps is 1e-10
  (MLX 1e-8), passed explicitly. ``lr_decay`` (``lr / (1 + (t-1)*lr_decay)``)
  and ``initial_accumulator_value`` (the state's starting sum) are carried.
- ``maximize`` and an L2 ``weight_decay`` are gradient terms torch applies before
  the update (``g = -g``; ``g = g + wd*p``); MLX's Adam, RMSprop and Adagrad have
  no such options, so the optimizer class gets a small mixin that adds them, in
  torch's order. ``foreach``/``fused``/``capturable``/``differentiable`` choose
  torch kernels, not maths: noted when set, otherwise ignored.
"""

from __future__ import annotations

from ..errors import Torch2MLXError
from .report import TrainingReport

#: torch state key -> MLX state key, per optimizer kind.
MOMENTS = {
    "Adam": {"exp_avg": "m", "exp_avg_sq": "v"},
    "AdamW": {"exp_avg": "m", "exp_avg_sq": "v"},
    "SGD": {"momentum_buffer": "v"},
    "RMSprop": {"square_avg": "v"},
    "Adagrad": {"sum": "v"},
}
#: Kinds whose update reads the step count (MLX keeps one, torch one per parameter).
USES_STEP = ("Adam", "AdamW", "Adagrad")
KINDS = tuple(MOMENTS)

# Keys torch schedulers add to param groups; they belong to the scheduler, not the optimizer.
_SCHEDULER_KEYS = {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}
_IMPL_FLAGS = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}


def infer_kind(param_groups=None, state=None) -> str:
    """Which torch optimizer a state dict came from, told by its param-group keys (or state keys)."""
    keys = set(param_groups[0]) if param_groups else set()
    if "betas" in keys:
        return "AdamW" if param_groups[0].get("decoupled_weight_decay") else "Adam"
    for kind, mark in (("SGD", "nesterov"), ("RMSprop", "centered"), ("Adagrad", "lr_decay")):
        if mark in keys:
            return kind
    skeys = {k for s in (state or {}).values() for k in s}
    for kind, moments in MOMENTS.items():
        if (
            skeys
            and skeys - {"step"} <= set(moments) | {"max_exp_avg_sq", "grad_avg", "momentum_buffer"}
            and set(moments) & skeys
        ):
            return kind
    raise Torch2MLXError(
        f"cannot tell the optimizer kind from keys {sorted(keys | skeys)}; pass kind= (one of {', '.join(KINDS)})"
    )


def kind_of(optimizer) -> str:
    """The kind of a live torch optimizer (a subclass counts as its nearest known base)."""
    for c in type(optimizer).__mro__:
        if c.__name__ in KINDS:
            if c.__name__ == "Adam" and any(g.get("decoupled_weight_decay") for g in optimizer.param_groups):
                return "AdamW"
            return c.__name__
    raise Torch2MLXError(
        f"torch optimizer {type(optimizer).__name__} has no MLX mapping (supported: {', '.join(KINDS)})"
    )


class TorchTerms:
    """Mixin for an ``mlx.optimizers`` class: torch's gradient terms and Adagrad's lr_decay.

    ``maximize`` negates the gradient and ``l2`` adds ``l2 * parameter`` to it,
    in that order, before the optimizer's own update (as torch does).
    ``lr_decay`` divides the learning rate by ``1 + (t-1)*lr_decay`` at step t.
    """

    maximize = False
    l2 = 0.0
    lr_decay = 0.0

    def apply_single(self, gradient, parameter, state):
        if self.maximize:
            gradient = -gradient
        if self.l2:
            gradient = gradient + self.l2 * parameter
        return super().apply_single(gradient, parameter, state)

    @property
    def learning_rate(self):
        lr = self.state["learning_rate"]
        if not self.lr_decay:
            return lr
        import mlx.core as mx

        # apply_single runs after the step was incremented: (step - 1) is torch's (t - 1)
        done = mx.maximum(self.step, 1) - 1
        return lr / (1 + done.astype(mx.float32) * self.lr_decay)

    @learning_rate.setter
    def learning_rate(self, value):
        import mlx.core as mx

        self.state["learning_rate"] = mx.array(value)


class FollowsMomentum:
    """Mixin for an ``mlx.optimizers`` class: beta1 or momentum set from a schedule before every update.

    torch's OneCycleLR (``cycle_momentum``) rewrites the param group's ``betas[0]`` or
    ``momentum`` at every scheduler step; MLX keeps them as plain attributes. Here
    ``momentum_schedule(step)`` (the step count before the update, as MLX calls a
    learning-rate schedule) gives the value for the update about to be applied.
    Like a converted learning-rate schedule it reads the step on the host, so call
    ``update`` outside ``mx.compile``.
    """

    momentum_schedule = None
    momentum_key = "momentum"  # or "betas" (beta1)

    def apply_gradients(self, gradients, parameters):
        if self.momentum_schedule is not None:
            value = float(self.momentum_schedule(int(self.step.item())))
            if self.momentum_key == "betas":
                self.betas = [value, self.betas[1]]
            else:
                self.momentum = value
        return super().apply_gradients(gradients, parameters)


_classes: dict[tuple, type] = {}


def _with(cls, *mixins):
    key = (cls, *mixins)
    if key not in _classes:
        prefix = "".join("Torch" if m is TorchTerms else "Cycled" for m in mixins)
        _classes[key] = type(f"{prefix}{cls.__name__}", (*mixins, cls), {"__module__": __name__})
    return _classes[key]


def _flags(group: dict, kind: str, report: TrainingReport, handled: set) -> None:
    for k, default in _IMPL_FLAGS.items():
        if group.get(k, default) not in (default, False, None):
            report.notes.append(f"{kind} {k}={group[k]!r} chooses torch kernels only; MLX has no such switch")
    extra = sorted(set(group) - handled - set(_IMPL_FLAGS) - _SCHEDULER_KEYS - {"params", "maximize", "lr"})
    for k in extra:
        # unknown to us, so it may change the update: not something to drop quietly
        report.inexact.append(
            f"{kind} param-group key {k}={group[k]!r} is not known here; whatever it does in torch is not carried"
        )


def hyperparameters(kind: str, group: dict, report: TrainingReport) -> tuple[type, dict, dict]:
    """``(MLX class, constructor kwargs without learning_rate, TorchTerms settings)`` for one param group."""
    import mlx.optimizers as optim

    g = group
    terms = {"maximize": bool(g.get("maximize", False))}
    if kind in ("Adam", "AdamW"):
        decoupled = kind == "AdamW" or bool(g.get("decoupled_weight_decay"))
        kwargs = {
            "betas": [float(b) for b in g.get("betas", (0.9, 0.999))],
            "eps": float(g.get("eps", 1e-8)),
            "bias_correction": True,
        }
        wd = float(g.get("weight_decay", 0.0))
        if decoupled:
            cls, kwargs["weight_decay"] = optim.AdamW, wd
        else:
            cls, terms["l2"] = optim.Adam, wd
        if g.get("amsgrad"):
            report.inexact.append(f"{kind} amsgrad=True (MLX's Adam keeps no running maximum of v)")
        _flags(g, kind, report, {"betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay"})
    elif kind == "SGD":
        cls = optim.SGD
        kwargs = {
            "momentum": float(g.get("momentum", 0.0)),
            "weight_decay": float(g.get("weight_decay", 0.0)),
            "dampening": float(g.get("dampening", 0.0)),
            "nesterov": bool(g.get("nesterov", False)),
        }
        _flags(g, kind, report, {"momentum", "weight_decay", "dampening", "nesterov"})
    elif kind == "RMSprop":
        cls = optim.RMSprop
        kwargs = {"alpha": float(g.get("alpha", 0.99)), "eps": float(g.get("eps", 1e-8))}
        terms["l2"] = float(g.get("weight_decay", 0.0))
        if float(g.get("momentum", 0.0)):
            report.inexact.append(f"RMSprop momentum={g['momentum']} (MLX's RMSprop has no momentum buffer)")
        if g.get("centered"):
            report.inexact.append("RMSprop centered=True (MLX's RMSprop does not subtract the mean gradient)")
        _flags(g, kind, report, {"alpha", "eps", "weight_decay", "momentum", "centered"})
    elif kind == "Adagrad":
        cls = optim.Adagrad
        kwargs = {"eps": float(g.get("eps", 1e-10))}
        terms["l2"] = float(g.get("weight_decay", 0.0))
        terms["lr_decay"] = float(g.get("lr_decay", 0.0))
        _flags(g, kind, report, {"eps", "weight_decay", "lr_decay", "initial_accumulator_value"})
    else:
        raise Torch2MLXError(f"optimizer kind {kind!r} has no MLX mapping (supported: {', '.join(KINDS)})")
    return cls, kwargs, {k: v for k, v in terms.items() if v}


def make(kind: str, group: dict, learning_rate, report: TrainingReport, momentum=None, momentum_key: str | None = None):
    """The MLX optimizer for one torch param group; ``learning_rate`` is a float or a schedule.

    ``momentum``: a schedule (step -> value) for beta1 (``momentum_key="betas"``) or SGD's momentum.
    """
    cls, kwargs, terms = hyperparameters(kind, group, report)
    if momentum is not None:
        if (momentum_key == "betas") != (kind in ("Adam", "AdamW")) or kind in ("RMSprop", "Adagrad"):
            report.inexact.append(f"the schedule cycles {momentum_key}, which MLX's {kind} does not have")
            momentum = None
    mixins = ((TorchTerms,) if terms else ()) + ((FollowsMomentum,) if momentum is not None else ())
    if mixins:
        cls = _with(cls, *mixins)
    opt = cls(learning_rate=learning_rate, **kwargs)
    for k, v in terms.items():
        setattr(opt, k, v)
    if momentum is not None:
        opt.momentum_schedule, opt.momentum_key = momentum, momentum_key
    return opt
