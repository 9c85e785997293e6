"""The analyzer: build a model on the meta device, map it to MLX through the registry, report.

    report = torch2mlx.analyze("model_dir")          # config.json -> transformers model, no weights read
    report = torch2mlx.analyze(model)                # a live nn.Module
    report = torch2mlx.analyze("pkg.mod:Net", model_kwargs={"dim": 64})
    report.coverage, report.blockers, report.tensors, report.to_dict()

torch and transformers are imported when one of these functions needs them,
never when this package is imported.
"""

from __future__ import annotations

import os
import time

from ..errors import Torch2MLXError
from .report import Report, model_report
from .stream_inputs import StreamInputs, module_inputs, stream_inputs

__all__ = ["analyze", "Report", "StreamInputs", "stream_inputs", "module_inputs"]


def analyze(x, *, model: str | None = None, model_kwargs=None, allow_globals=()) -> Report:
    """How much of a model maps to MLX, how each tensor converts, and what blocks the rest.

    ``torch2mlx.analyze`` is this function. Imports torch only when needed (a module, a class, a config).

    Args:
        x: an ``nn.Module``, a class path ``"pkg.mod:Class"``, or a checkpoint / config directory
            (a config.json transformers knows is built on the meta device: no weights are read).
        model: for a checkpoint path, the class path of the model its weights belong to.
        model_kwargs: that class's constructor keywords (a dict or JSON text).
        allow_globals: pickle globals whose calls are accepted as inert placeholders (``--allow-global``).

    Returns:
        Report: ``table()`` is what ``t2mlx analyze`` prints, ``to_dict()`` its JSON; ``tensors``
        holds each tensor's rule and MLX name, ``blockers`` what has no MLX counterpart.

    Raises:
        Torch2MLXError: an unreadable path, a class that cannot be imported or built, bad kwargs.

    Example:
        >>> import torch2mlx
        >>> report = torch2mlx.analyze("torch.nn:Linear", model_kwargs={"in_features": 4, "out_features": 2})
        >>> print(report.table())  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        if model is None and not os.path.exists(path) and ":" in path and "://" not in path:
            from .build import from_class

            report = model_report(from_class(path, model_kwargs, what="model class"), path)
        else:
            report = _from_path(path, model, model_kwargs, allow_globals)
    elif hasattr(x, "named_modules") and hasattr(x, "_parameters"):
        from .build import from_module

        report = model_report(from_module(x), type(x).__name__)
    else:
        raise Torch2MLXError(f"cannot analyze a {type(x).__name__}: give an nn.Module, 'pkg.mod:Class' or a path")
    report.seconds = time.perf_counter() - t0
    return report


def _from_path(path: str, model, model_kwargs, allow_globals=()) -> Report:
    from ..formats import remote
    from ..formats.checkpoint import open_checkpoint
    from . import build, headers

    if remote.source_url(path) is not None:  # a remote source: headers by range, config.json fetched beside them
        ck = open_checkpoint(path, allow_globals=allow_globals)
        path = ck.path
        config_dir = ck.config_dir if ck.config is not None else None
    else:
        if not os.path.exists(path):
            raise Torch2MLXError(f"{path}: no such file or directory")
        ck = open_checkpoint(path, allow_globals=allow_globals) if build.has_weights(path) else None
        config_dir = path if os.path.isfile(os.path.join(path, "config.json")) else None
    if model is not None:
        return model_report(build.from_class(model, model_kwargs, config_dir), path, ck)
    notes = []
    if config_dir is not None:
        from . import cache

        k = cache.key(config_dir, ck)
        hit = cache.load(k, path, ck)
        if hit is not None:
            report, _, where = hit
            report.notes.append(f"analysis reused from {where} (T2MLX_NO_CACHE=1 builds the model again)")
            return report
        why = build.why_not_config(config_dir)
        if why is None:
            built = build.from_config_dir(config_dir)
            report = model_report(built, path, ck)
            cache.save(k, report, built.notes, ck)
            return report
        notes.append(why)
    if ck is None:
        raise Torch2MLXError(f"{path}: holds neither weights nor a config.json transformers can build")
    return headers.report(ck, path, notes)
