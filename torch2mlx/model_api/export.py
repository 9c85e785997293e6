"""``torch2mlx.export``: convert a live model now, or mark a model class to convert itself.

    torch2mlx.export(model, "weights.safetensors")      # now; same as convert(..., overwrite=True)

    @torch2mlx.export("weights.safetensors")
    class Net(nn.Module): ...

A decorated class converts its weights (a) when ``model.export_mlx()`` is called,
and (b) after its first forward pass in eval mode (``model.eval()``), once per
instance. Training-mode forwards never trigger: weights mid-training are not
the ones to ship, and the first eval forward usually follows loading or
training. ``torch.save(model.state_dict(), ...)`` cannot be hooked (the state
dict is a plain dict), so saving is not a trigger; call ``export_mlx()`` next to it.
"""

from __future__ import annotations

import functools
import os

from ..errors import Torch2MLXError
from ..stream.memory import is_module

_TRIGGERS = ("eval", "always", None)


def export(model_or_path, path=None, *, on_forward="eval", **options):
    """``export(model, path)`` converts now; ``export(path)`` is a class decorator (see the module doc).

    ``torch2mlx.export`` is this function.

    Args:
        model_or_path: an ``nn.Module`` (convert it now to ``path``), or the output path of a decorator.
        path: the output (as ``torch2mlx.convert`` takes it), with a module.
        on_forward: ``"eval"`` (the first forward in eval mode), ``"always"`` (the first forward in any
            mode) or ``None`` (only ``export_mlx()``).
        **options: go to ``torch2mlx.convert`` (``dtype``, ``q_bits``, ``model``, ...). The output is
            replaced each time (it belongs to the export).

    Returns:
        Result of the conversion (a module), or the class decorator (a path).

    Raises:
        Torch2MLXError: a missing path, a decorated class that is no ``nn.Module``, a bad ``on_forward``,
            or what ``convert`` raises.

    Example:
        >>> torch2mlx.export(model, "weights.safetensors")  # doctest: +SKIP
    """
    if is_module(model_or_path):
        if path is None:
            raise Torch2MLXError("export(model, path): the output path is missing")
        return _run(model_or_path, path, options)
    if not isinstance(model_or_path, (str, os.PathLike)) or path is not None:
        raise Torch2MLXError("use export(model, path) or @export(path) on an nn.Module class")
    if on_forward not in _TRIGGERS:
        raise Torch2MLXError(f"on_forward must be one of {_TRIGGERS}, got {on_forward!r}")
    return functools.partial(_decorate, path=os.fspath(model_or_path), on_forward=on_forward, options=options)


def _run(model, path, options):
    from ..stream.convert import convert

    return convert(model, path, **{"overwrite": True, **options})


def _decorate(cls, *, path: str, on_forward, options: dict):
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise Torch2MLXError(f"@torch2mlx.export decorates nn.Module classes, not {cls!r}")
    forward = cls.forward

    def export_mlx(self, path=None, **more):
        """Convert this model's current weights to MLX (default path from the decorator)."""
        self._torch2mlx_exported = True
        return _run(self, path or cls._torch2mlx_export_path, {**options, **more})

    # Under torch.compile the export is file I/O, not graph: dynamo must not trace into it.
    export_outside_graph = torch.compiler.disable(export_mlx)

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        # After the pass: a lazy layer's weights exist only once it has run.
        if (
            on_forward is not None
            and not getattr(self, "_torch2mlx_exported", False)
            and (on_forward == "always" or not self.training)
        ):
            export_outside_graph(self)
        return out

    cls.forward = wrapped
    cls.export_mlx = export_mlx
    cls._torch2mlx_export_path = path
    return cls
