"""The seam between the streaming engine and the model analyzer.

The engine (``torch2mlx.stream``) takes rules from a model -- ``model=...``, or a config.json next to the
weights -- but must not import the analyzer, which builds models with torch and transformers: a lower layer
never imports a higher one (``tests/test_layers.py``). The analyzer is wired in from above instead: the
package's ``__init__``, which Python runs before any ``torch2mlx`` submodule, registers it here, and the engine
calls through this module. The analyzer itself loads only when a conversion asks for a model.
"""

from __future__ import annotations

from typing import Callable

from ..errors import Torch2MLXError

_forward: Callable | None = None
_reverse: Callable | None = None


def register(forward: Callable, reverse: Callable) -> None:
    """Install the analyzer: ``forward(ck, *, model, model_kwargs, status)`` gives its ``StreamInputs``
    (torch names -> MLX), ``reverse(ck, model, model_kwargs)`` gives (forward specs or None, torch shapes, notes)."""
    global _forward, _reverse
    _forward, _reverse = forward, reverse


def stream_inputs(ck, *, model=None, model_kwargs=None, status=None):
    """Specs, drops and notes for converting ``ck``, from ``model`` or the directory's config.json."""
    return _installed(_forward)(ck, model=model, model_kwargs=model_kwargs, status=status)


def reverse_inputs(ck, model, model_kwargs):
    """The forward specs of the model of the MLX checkpoint ``ck`` (to be inverted), its torch shapes, notes."""
    return _installed(_reverse)(ck, model, model_kwargs)


def _installed(fn: Callable | None) -> Callable:
    if fn is None:
        raise Torch2MLXError("no model analyzer is registered: import torch2mlx registers it")
    return fn
