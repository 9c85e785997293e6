"""``MLXModule``: a LightningModule-shaped ``mlx.nn.Module`` the user completes with an MLX ``__call__``."""

from __future__ import annotations

import inspect
import os

import mlx.core as mx
import mlx.nn as nn

from ..errors import Torch2MLXError
from . import source as _source


class MLXModule(nn.Module):
    """Subclass it, build the layers in ``__init__`` named as the torch module names them, write ``__call__``.

    ``training_step`` / ``validation_step`` default to classification with cross-entropy
    on ``(inputs, integer labels)`` batches; override them as in Lightning. ``self.log``
    records a metric for ``MLXTrainer``. ``configure_optimizers`` returns what
    ``from_checkpoint`` / ``from_torch`` converted from the torch module, or override it
    (an ``mlx.optimizers`` optimizer, or ``{"optimizer": ..., "lr_scheduler": {"scheduler":
    schedule, "interval": "step"}}``).
    """

    def __init__(self):
        super().__init__()
        # Plain attributes, not module state: MLX stores dicts and lists set as attributes in its tree.
        object.__setattr__(self, "_t2m_logged", {})
        object.__setattr__(self, "_t2m_optim", None)
        object.__setattr__(self, "_t2m_resume", {})

    # --- the Lightning surface --------------------------------------------------------------------------

    def log(self, name: str, value, prog_bar: bool = True) -> None:
        """Record a metric (an mx.array or a number) for the trainer's logs and progress bar."""
        self._t2m_logged[name] = (value, prog_bar)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.losses.cross_entropy(self(x), y, reduction="mean")
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.losses.cross_entropy(logits, y, reduction="mean"))
        self.log("val_acc", mx.mean(mx.argmax(logits, axis=-1) == y))

    def configure_optimizers(self):
        if self._t2m_optim is None:
            raise Torch2MLXError(
                f"{type(self).__name__} has no optimizer: build it with from_checkpoint/from_torch "
                "(the torch module's configure_optimizers is converted) or override "
                "configure_optimizers"
            )
        return self._t2m_optim

    # --- from torch ---------------------------------------------------------------------------------------

    @classmethod
    def _construct(cls, args, kwargs, hyper_parameters: dict):
        if args or kwargs:
            return cls(*args, **kwargs)
        sig = inspect.signature(cls.__init__)
        takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        return cls(**{k: v for k, v in hyper_parameters.items() if takes_all or k in sig.parameters})

    def _load(self, weights: dict, strict: bool) -> None:
        try:
            self.load_weights(list(weights.items()), strict=strict)
        except ValueError as e:
            raise Torch2MLXError(
                f"{type(self).__name__} does not take the converted weights ({e}); name its "
                "layers as the torch module names them"
            ) from None
        mx.eval(self.parameters())

    @classmethod
    def from_torch(cls, torch_module, *args, optimizers: bool = True, strict: bool = True, **kwargs):
        """An instance with a live torch module's weights (and its configure_optimizers, converted).

        For starting MLX training from the same point as a torch run; the optimizer state is fresh.
        """
        from ..training.arrays import Array
        from ..training.optimizer_state import forward_specs

        specs = forward_specs(torch_module)
        model = cls._construct(args, kwargs, dict(getattr(torch_module, "hparams", {}) or {}))
        tensors = {n: Array.of(n, t) for n, t in torch_module.state_dict().items()}
        model._load(_source.mlx_weights(specs, tensors), strict)
        if optimizers and hasattr(torch_module, "configure_optimizers"):
            object.__setattr__(model, "_t2m_optim", _source.convert_config(torch_module, specs, strict=strict))
        return model

    def resume_from(self, path) -> "MLXModule":
        """Continue an MLX run from a ``ModelCheckpoint`` directory: weights now; optimizer state, step,
        epoch and schedule position when ``MLXTrainer.fit`` starts (onto ``configure_optimizers``' optimizer)."""
        import json

        from mlx.utils import tree_unflatten

        from ..model_api.load import load_converted

        path = os.fspath(path)
        self._load(load_converted(path), True)
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
                counters = json.load(f)
        except (OSError, ValueError) as e:
            raise Torch2MLXError(
                f"{path}: no readable trainer_state.json ({e}); not a ModelCheckpoint directory"
            ) from None
        resume = {
            "global_step": counters["global_step"],
            "epoch": counters["epoch"] + 1,
            "batches_done": 0,
            "scheduler_steps": counters["scheduler_steps"],
        }
        opt_file = os.path.join(path, "optimizer.safetensors")
        if os.path.isfile(opt_file):
            resume["optimizer_state"] = tree_unflatten(list(mx.load(opt_file).items()))
        object.__setattr__(self, "_t2m_resume", resume)
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path,
        *args,
        source_class=None,
        strict: bool = True,
        scheduler_interval=None,
        mid_epoch: str = "skip",
        **kwargs,
    ):
        """An instance from a Lightning ``.ckpt`` (or a plain torch run's file): weights, optimizer
        moments and schedule position.

        ``source_class``: the torch LightningModule that wrote the checkpoint. It is built on
        the meta device from the checkpoint's hyper-parameters, for the exact layer rules and
        its ``configure_optimizers``. A plain ``nn.Module`` works too (a ``torch.save`` of
        ``{"model": ..., "optimizer": ..., "scheduler": ...}`` state dicts): its layer rules and
        parameter order are used, the optimizer and scheduler kinds are read from their state.
        Without it, rules are inferred from shapes as well. Where no ``configure_optimizers`` says
        how the scheduler stepped, ``scheduler_interval`` ("step" or "epoch") must.
        ``mid_epoch``: for a checkpoint saved inside an epoch, ``"skip"`` continues with the
        batches not done yet (the uninterrupted run); ``"restart"`` does what Lightning's
        ``ckpt_path`` resume does with a plain DataLoader: the data starts again at its first
        batch and the epoch ends after the batches it had left.
        The MLX module is built with ``*args, **kwargs``, or else from the hyper-parameters its
        constructor names.
        """
        from ..training.checkpoint import read_training_checkpoint

        if mid_epoch not in ("skip", "restart"):
            raise Torch2MLXError(f"mid_epoch must be 'skip' or 'restart', got {mid_epoch!r}")
        ck = read_training_checkpoint(os.fspath(path))
        opt_state = ck.optimizer_states[0] if ck.optimizer_states else None
        sched_state = ck.lr_schedulers[0] if ck.lr_schedulers else None
        src = None
        if source_class is not None:
            from ..training.optimizer_state import forward_specs

            src = _source.build_meta(source_class, ck.hyper_parameters)
            specs = forward_specs(src)
        if src is not None and hasattr(src, "configure_optimizers"):
            config = (
                _source.convert_config(src, specs, opt_state, sched_state, strict=strict)
                if opt_state is not None
                else None
            )
            if config is not None and scheduler_interval is not None:
                config.interval = scheduler_interval
        else:
            specs, config = _without_source(ck, opt_state, sched_state, scheduler_interval, strict, src)
        model = cls._construct(args, kwargs, ck.hyper_parameters)
        model._load(_source.mlx_weights(specs, ck.state_dict), strict)
        object.__setattr__(model, "_t2m_optim", config)
        object.__setattr__(model, "_t2m_resume", {**_resume_point(ck), "mid_epoch": mid_epoch})
        return model


def _without_source(ck, opt_state, sched_state, interval, strict, src=None):
    """Rules from ``src`` (a torch module without configure_optimizers) or shapes; kinds from the state."""
    from ..core import rules
    from ..core.spec import RuleSpec
    from ..training import names as _names
    from ..training.convert import convert_optimizer
    from ..training.optimizer_state import forward_specs
    from ..training.schedules import convert_scheduler

    kept = [n for n in ck.state_dict if not n.endswith("num_batches_tracked")]
    if src is not None:
        specs = forward_specs(src)
    else:
        specs = [
            RuleSpec(
                n,
                (n,),
                rules.infer(n, ck.state_dict[n].shape, ck.state_dict[n].dtype.is_float) or "identity",
                {},
                "inferred",
            )
            for n in kept
        ]
    if opt_state is None:
        return specs, None
    n = _names.count_ids(opt_state["param_groups"])
    names = _names.from_module(src, None, n) if src is not None else _names.from_state_dict(kept, n)
    schedule = (
        convert_scheduler(sched_state, param_groups=opt_state["param_groups"], strict=None) if sched_state else None
    )
    conv = convert_optimizer(opt_state, names, specs, strict=None)
    if schedule is not None:
        conv.report.extend(schedule.report)
        if interval is None:
            conv.report.inexact.append(
                "how often the scheduler stepped is not in the checkpoint: pass "
                "scheduler_interval='step' or 'epoch' (strict=False assumes 'epoch', "
                "Lightning's default)"
            )
    conv.report.check(strict, "the checkpoint's optimizer")
    return specs, _source.OptimConfig(
        conv.optimizer, schedule, interval or "epoch", 1, schedule.start if schedule else 0, conv.report
    )


def _resume_point(ck) -> dict:
    """Where the torch run stopped: optimizer steps taken, epochs finished, batches done in the current one."""
    loops = ck.raw.get("loops") if isinstance(ck.raw.get("loops"), dict) else {}
    fit = loops.get("fit_loop", {}) if isinstance(loops, dict) else {}
    done = _get(fit, "epoch_progress", "current", "processed")
    # "processed" counts batches whose optimizer step ran ("completed" lags by one inside a batch-end hook)
    batches = _get(fit, "epoch_loop.batch_progress", "current", "processed")
    last = _get(fit, "epoch_loop.batch_progress", "is_last_batch")
    epochs = done if isinstance(done, int) else (ck.epoch or 0)
    # a checkpoint from inside an epoch: Lightning counts on from here (batch indices, the epoch's length);
    # which data comes next is the trainer's mid_epoch policy
    inside = batches if isinstance(batches, int) and not last else 0
    return {"global_step": ck.global_step or 0, "epoch": epochs, "batches_done": inside}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
