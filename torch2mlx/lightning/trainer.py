"""``MLXTrainer``: Lightning's fit loop for an ``MLXModule``, in MLX.

Per batch: ``mx.value_and_grad`` of ``training_step``, the optimizer update,
one ``mx.eval`` of parameters, optimizer state and logged metrics. The learning
rate follows the schedule as Lightning steps a scheduler: before every update
with ``interval="step"`` (counted every ``frequency`` updates), at the start
of every epoch with ``interval="epoch"``; the count starts where a restored
torch scheduler stopped. A model remembers where its last fit ended (step,
epoch, schedule position), so a later fit continues it, as a restored one does.
A checkpoint from inside an epoch continues with the batches not done yet, or, with
``from_checkpoint(..., mid_epoch="restart")``, as Lightning's ``ckpt_path`` resume does with
a plain DataLoader (the data from its first batch, for the batches the epoch had left).
"""

from __future__ import annotations

import csv
import itertools
import os

import mlx.core as mx
import mlx.nn as nn

from ..errors import Torch2MLXError
from .data import to_mlx
from .source import normalize


class MLXTrainer:
    def __init__(
        self,
        max_epochs: int = 1,
        max_steps: int = -1,
        callbacks=None,
        log_every_n_steps: int = 50,
        enable_progress_bar: bool = True,
        default_root_dir=None,
        limit_train_batches: int | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ):
        if max_epochs < 1 and max_steps < 1:
            raise Torch2MLXError("give max_epochs >= 1 or max_steps >= 1")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise Torch2MLXError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.callbacks = list(callbacks or [])
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.enable_progress_bar = enable_progress_bar
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else None
        self.limit_train_batches = limit_train_batches
        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.callback_metrics: dict[str, float] = {}
        self.history: list[dict] = []  # every logged row: step, epoch and the metrics
        self.optimizer = None
        self.config = None
        self.scheduler_steps = 0

    # --- learning rate ------------------------------------------------------------------------------------

    def _apply_schedule(self) -> None:
        sched = self.config.schedule
        if sched is None:
            return
        opts = getattr(self.optimizer, "optimizers", [self.optimizer])
        groups = getattr(sched, "groups", None)
        for i, opt in enumerate(opts):
            if groups is not None:
                opt.learning_rate = sched.lr(self.scheduler_steps, i if len(groups) > 1 else 0)
            else:
                opt.learning_rate = sched(self.scheduler_steps)
            mom = getattr(sched, "momentum", None)
            if mom:
                value = mom[i if len(mom) > 1 else 0](self.scheduler_steps)
                if sched.momentum_key == "betas":
                    opt.betas = [value, opt.betas[1]]
                else:
                    opt.momentum = value

    # --- logging ------------------------------------------------------------------------------------------

    def _collect(self, model) -> dict:
        got = {
            k: (float(v.item()) if isinstance(v, mx.array) else float(v), bar)
            for k, (v, bar) in model._t2m_logged.items()
        }
        model._t2m_logged.clear()
        return got

    def _record(self, row: dict) -> None:
        self.history.append(row)
        if self.default_root_dir is None:
            return
        os.makedirs(self.default_root_dir, exist_ok=True)
        path = os.path.join(self.default_root_dir, "metrics.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "name", "value"])
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    w.writerow([row["step"], row["epoch"], k, v])

    def _callbacks(self, hook: str, model) -> None:
        for cb in self.callbacks:
            getattr(cb, hook, lambda *a: None)(self, model)

    # --- the loop -----------------------------------------------------------------------------------------

    def fit(self, model, train_dataloader, val_dataloader=None):
        """Train ``model`` (an MLXModule) on ``train_dataloader`` (a torch DataLoader or any re-iterable)."""
        if not hasattr(model, "training_step"):
            raise Torch2MLXError("MLXTrainer.fit needs an MLXModule (it has training_step)")
        self.config = normalize(model.configure_optimizers())
        self.optimizer = self.config.optimizer
        resume = dict(getattr(model, "_t2m_resume", {}) or {})
        self.global_step = int(resume.get("global_step", 0))
        self.current_epoch = int(resume.get("epoch", 0))
        self.scheduler_steps = int(resume.get("scheduler_steps", self.config.start))
        if "optimizer_state" in resume:  # an MLX checkpoint (MLXModule.resume_from)
            self.optimizer.state = resume.pop("optimizer_state")
            model._t2m_resume.pop("optimizer_state", None)
        skip = int(resume.get("batches_done", 0))
        restart = resume.get("mid_epoch") == "restart"
        self.should_stop = False

        def loss_fn(batch, batch_idx):
            out = model.training_step(batch, batch_idx)
            return out["loss"] if isinstance(out, dict) else out

        step_fn = nn.value_and_grad(model, loss_fn)
        self._callbacks("on_fit_start", model)
        while self.current_epoch < self.max_epochs and not self._steps_done():
            if self.config.schedule is not None and self.config.interval == "epoch":
                self._apply_schedule()
            model.train()
            self._train_epoch(model, step_fn, train_dataloader, skip, restart)
            skip = 0
            if (
                self.config.schedule is not None
                and self.config.interval == "epoch"
                and (self.current_epoch + 1) % self.config.frequency == 0
            ):
                self.scheduler_steps += 1
            self._callbacks("on_train_epoch_end", model)
            if val_dataloader is not None:
                self._validate(model, val_dataloader)
            self._callbacks("on_validation_end", model)
            self.current_epoch += 1
            if self.should_stop:
                break
        self._callbacks("on_fit_end", model)
        # A later fit of this model continues from here, not from where its checkpoint stopped.
        object.__setattr__(
            model,
            "_t2m_resume",
            {
                "global_step": self.global_step,
                "epoch": self.current_epoch,
                "batches_done": 0,
                "scheduler_steps": self.scheduler_steps,
            },
        )
        return self

    def _clip(self, grads):
        """Lightning's gradient clipping: the global 2-norm (torch's clip_grad_norm_, same 1e-6) or each value."""
        if not self.gradient_clip_val:
            return grads
        if self.gradient_clip_algorithm == "norm":
            import mlx.optimizers as optim

            return optim.clip_grad_norm(grads, self.gradient_clip_val)[0]
        from mlx.utils import tree_map

        v = self.gradient_clip_val
        return tree_map(lambda g: mx.clip(g, -v, v), grads)

    def _steps_done(self) -> bool:
        return self.max_steps > 0 and self.global_step >= self.max_steps

    def _batches(self, loader, skip: int, restart: bool = False):
        """The epoch's ``(batch_idx, batch)`` pairs after ``skip`` batches done before a checkpoint.

        ``restart``: Lightning's resume with a plain DataLoader, which cannot fast-forward: the
        data starts again at its first batch, indices and the epoch's length go on as if skipped.
        """
        it = iter(loader)
        left = None if self.limit_train_batches is None else max(0, self.limit_train_batches - skip)
        if skip and restart:
            if hasattr(loader, "__len__"):
                n = len(loader) - skip
                left = n if left is None else min(left, n)
        elif skip:
            it = itertools.islice(it, skip, None)
        if left is not None:
            it = itertools.islice(it, max(0, left))
        return enumerate(it, start=skip)

    def _train_epoch(self, model, step_fn, loader, skip: int, restart: bool = False) -> None:
        bar = None
        batches = self._batches(loader, skip, restart)
        if self.enable_progress_bar:
            from tqdm.auto import tqdm

            total = len(loader) if hasattr(loader, "__len__") else None
            bar = tqdm(batches, total=total, initial=skip, desc=f"epoch {self.current_epoch}", leave=False)
            batches = bar
        try:
            for batch_idx, batch in batches:
                if self.config.schedule is not None and self.config.interval == "step":
                    self._apply_schedule()
                loss, grads = step_fn(to_mlx(batch), batch_idx)
                self.optimizer.update(model, self._clip(grads))
                mx.eval(
                    model.parameters(),
                    self.optimizer.state,
                    loss,
                    [v for v, _ in model._t2m_logged.values() if isinstance(v, mx.array)],
                )
                self.global_step += 1
                # Lightning counts the frequency by the batch index inside the epoch, not the global step
                if (
                    self.config.schedule is not None
                    and self.config.interval == "step"
                    and (batch_idx + 1) % self.config.frequency == 0
                ):
                    self.scheduler_steps += 1
                logged = self._collect(model)
                logged.setdefault("train_loss", (float(loss.item()), True))
                self.callback_metrics.update({k: v for k, (v, _) in logged.items()})
                if self.global_step % self.log_every_n_steps == 0:
                    self._record(
                        {
                            "step": self.global_step,
                            "epoch": self.current_epoch,
                            **{k: v for k, (v, _) in logged.items()},
                        }
                    )
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, (v, shown) in logged.items() if shown}, refresh=False)
                if self._steps_done():
                    break
        finally:
            if bar is not None:
                bar.close()

    def _validate(self, model, loader) -> dict:
        model.eval()
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for batch_idx, batch in enumerate(loader):
            batch = to_mlx(batch)
            model.validation_step(batch, batch_idx)
            n = _batch_size(batch)
            for k, (v, _) in self._collect(model).items():
                # Lightning's epoch mean weights each batch by its size
                sums[k] = sums.get(k, 0.0) + v * n
                weights[k] = weights.get(k, 0.0) + n
        model.train()
        metrics = {k: sums[k] / weights[k] for k in sums}
        self.callback_metrics.update(metrics)
        if metrics:
            self._record({"step": self.global_step, "epoch": self.current_epoch, **metrics})
        return metrics

    def validate(self, model, val_dataloader) -> dict:
        """One pass of ``validation_step`` over ``val_dataloader``: the mean of every logged metric."""
        return self._validate(model, val_dataloader)


def _batch_size(batch) -> int:
    """The leading dimension of the batch's first array (1 when there is none)."""
    if isinstance(batch, mx.array):
        return batch.shape[0] if batch.ndim else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in items:
        n = _batch_size(v)
        if n:
            return n
    return 1
