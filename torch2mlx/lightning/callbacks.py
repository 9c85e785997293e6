"""MLXTrainer callbacks: ModelCheckpoint, EarlyStopping, ReduceLROnPlateau (Lightning's and torch's rules)."""

from __future__ import annotations

import math
import os
import shutil

from ..errors import Torch2MLXError


class Callback:
    """Hooks MLXTrainer calls with ``(trainer, model)``; override the ones you need."""

    def on_fit_start(self, trainer, model): ...
    def on_train_epoch_end(self, trainer, model): ...
    def on_validation_end(self, trainer, model): ...
    def on_fit_end(self, trainer, model): ...


def _improved(mode: str, value: float, best: float | None, delta: float = 0.0) -> bool:
    if best is None:
        return not math.isnan(value)
    return value < best - delta if mode == "min" else value > best + delta


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise Torch2MLXError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


class ModelCheckpoint(Callback):
    """Save MLX weights (through torch2mlx's writer) at the end of every ``every_n_epochs`` epochs.

    With ``monitor`` the best ``save_top_k`` are kept (by ``mode``); without it, the latest.
    Each checkpoint is a directory (``model.safetensors`` + index + manifest, the optimizer
    state in ``optimizer.safetensors``, counters in ``trainer_state.json``) that
    ``torch2mlx.load_converted`` reads. ``best_model_path`` / ``best_model_score`` as in Lightning.
    """

    def __init__(
        self,
        dirpath,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = False,
        every_n_epochs: int = 1,
        filename: str = "epoch={epoch}-step={step}",
        save_optimizer: bool = True,
    ):
        self.dirpath = os.fspath(dirpath)
        self.monitor, self.mode = monitor, _check_mode(mode)
        self.save_top_k, self.save_last = save_top_k, save_last
        self.every_n_epochs, self.filename, self.save_optimizer = max(1, every_n_epochs), filename, save_optimizer
        self.best_model_path: str | None = None
        self.best_model_score: float | None = None
        self.last_model_path: str | None = None
        self._kept: list[tuple[float, str]] = []

    def _save(self, trainer, model, name: str) -> str:
        from .saving import save_weights

        path = os.path.join(self.dirpath, name)
        extra = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "scheduler_steps": trainer.scheduler_steps,
            "metrics": dict(trainer.callback_metrics),
        }
        return save_weights(model, path, extra=extra, optimizer=trainer.optimizer if self.save_optimizer else None)

    def on_validation_end(self, trainer, model):
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        name = self.filename.format(
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            **{k.replace("/", "_"): v for k, v in trainer.callback_metrics.items()},
        )
        if self.save_last:
            self.last_model_path = self._save(trainer, model, "last")
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            path = self._save(trainer, model, name)
            for _, old in self._kept:
                if old != path:
                    shutil.rmtree(old, ignore_errors=True)
            self._kept = [(0.0, path)]
            self.best_model_path = path
            return
        if self.monitor not in trainer.callback_metrics:
            raise Torch2MLXError(
                f"ModelCheckpoint monitors {self.monitor!r}, which was not logged "
                f"(logged: {sorted(trainer.callback_metrics)})"
            )
        score = trainer.callback_metrics[self.monitor]
        ranked = sorted(self._kept, key=lambda t: t[0], reverse=self.mode == "max")
        if self.save_top_k > 0 and len(ranked) >= self.save_top_k and not _improved(self.mode, score, ranked[-1][0]):
            return
        path = self._save(trainer, model, name)
        ranked = sorted(ranked + [(score, path)], key=lambda t: t[0], reverse=self.mode == "max")
        if self.save_top_k > 0:
            for _, old in ranked[self.save_top_k :]:
                shutil.rmtree(old, ignore_errors=True)
            ranked = ranked[: self.save_top_k]
        self._kept = ranked
        self.best_model_score, self.best_model_path = ranked[0]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` validations."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, _check_mode(mode), patience, abs(min_delta)
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer, model):
        if self.monitor not in trainer.callback_metrics:
            raise Torch2MLXError(
                f"EarlyStopping monitors {self.monitor!r}, which was not logged "
                f"(logged: {sorted(trainer.callback_metrics)})"
            )
        value = trainer.callback_metrics[self.monitor]
        if _improved(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch


class ReduceLROnPlateau(Callback):
    """torch's ReduceLROnPlateau, driven by a logged metric after each validation.

    Multiplies the optimizer's learning rate by ``factor`` after ``patience`` validations
    without improvement (``threshold`` relative or absolute, as torch), then waits
    ``cooldown`` validations; never below ``min_lr``, and not for a change under ``eps``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ):
        if factor >= 1.0:
            raise Torch2MLXError("ReduceLROnPlateau factor must be < 1.0")
        if threshold_mode not in ("rel", "abs"):
            raise Torch2MLXError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.monitor, self.mode = monitor, _check_mode(mode)
        self.factor, self.patience, self.threshold, self.threshold_mode = factor, patience, threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best: float | None = None
        self.bad = 0
        self.cooldown_left = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.threshold_mode == "rel":
            edge = self.best * (1 - self.threshold) if self.mode == "min" else self.best * (1 + self.threshold)
        else:
            edge = self.best - self.threshold if self.mode == "min" else self.best + self.threshold
        return value < edge if self.mode == "min" else value > edge

    def on_validation_end(self, trainer, model):
        if trainer.config is not None and trainer.config.schedule is not None:
            raise Torch2MLXError("ReduceLROnPlateau and a learning-rate schedule both set the learning rate")
        value = trainer.callback_metrics[self.monitor]
        if self._better(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad = 0
        if self.bad > self.patience:
            for opt in getattr(trainer.optimizer, "optimizers", [trainer.optimizer]):
                old = float(opt.learning_rate.item())
                new = max(old * self.factor, self.min_lr)
                if old - new > self.eps:
                    opt.learning_rate = new
            self.cooldown_left, self.bad = self.cooldown, 0
