"""The seam between the streaming engine and the model analyzer (and torch itself).

The engine (``torch2mlx.stream``) takes rules from a model -- ``model=...``, a live ``nn.Module``, or a
config.json next to the weights -- and hands tensors back to torch (``to_torch`` without ``out``), but must not
import the analyzer or torch: a lower layer never imports a higher one (``tests/test_layers.py``). They are wired
in from above instead: the package's ``__init__``, which Python runs before any ``torch2mlx`` submodule,
registers them here, and the engine calls through this module. The analyzer (and torch) load only when a
conversion asks for them.

``StreamInputs`` is what crosses the seam: the rules a model gives, as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import Torch2MLXError
from .spec import RuleSpec

_hooks: dict[str, Callable] = {}


@dataclass
class StreamInputs:
    """Rules from a model: specs (exact rules and names), tensors to drop, notes and warnings."""

    specs: list[RuleSpec] | None = None  # None: no model information, the stream infers
    drop: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: object = None  # the analyzer's Report, when a model was analyzed
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, why no model rule)
    types: dict[str, str] | None = None  # module_types without a report (the rules kept as data)

    def all_warnings(self, dropped: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """``warnings`` and the tensors without model rules, less those the plan drops anyway
        (a tied ``lm_head.weight``): each tensor is reported once."""
        unmatched = [(n, w) for n, w in self.unmatched if n not in dropped]
        if not unmatched:
            return list(self.warnings)
        shown = "; ".join(f"{n} ({w})" for n, w in unmatched[:5])
        return self.warnings + [
            f"{len(unmatched)} tensor(s) have rules not from the model: {shown}"
            + (" ..." if len(unmatched) > 5 else "")
        ]

    @property
    def module_types(self) -> dict[str, str]:
        """MLX module path -> torch class name (decides which weights quantization takes)."""
        if self.types is not None:
            return dict(self.types)
        if self.report is None:
            return {}
        return {
            t.mlx[: -len(".weight")]: t.layer.replace(":", ".").split(".")[-1]
            for t in self.report.tensors  # type: ignore[attr-defined]
            if t.mlx and t.mlx.endswith(".weight")
        }


def register(forward: Callable, reverse: Callable, *, module: Callable, tensor: Callable) -> None:
    """Install the analyzer and torch's tensor constructor.

    ``forward(ck, *, model, model_kwargs, status)`` gives ``StreamInputs`` (torch names -> MLX);
    ``reverse(ck, model, model_kwargs)`` gives (forward specs or None, torch shapes, notes);
    ``module(ck, nn_module)`` gives ``StreamInputs`` for tensors of a live module;
    ``tensor(array, dtype)`` makes a ``torch.Tensor`` of a numpy array (raw bits for bfloat16/float8).
    """
    _hooks.update(forward=forward, reverse=reverse, module=module, tensor=tensor)


def stream_inputs(ck, *, model=None, model_kwargs=None, status=None) -> StreamInputs:
    """Specs, drops and notes for converting ``ck``, from ``model`` or the directory's config.json."""
    return _installed("forward")(ck, model=model, model_kwargs=model_kwargs, status=status)


def reverse_inputs(ck, model, model_kwargs):
    """The forward specs of the model of the MLX checkpoint ``ck`` (to be inverted), its torch shapes, notes."""
    return _installed("reverse")(ck, model, model_kwargs)


def module_inputs(ck, module) -> StreamInputs:
    """Specs and drops for ``ck``'s tensors from the live ``nn.Module`` they belong to (exact, from the registry)."""
    return _installed("module")(ck, module)


def torch_tensor(array, dtype):
    """``array`` (numpy values, or the raw bits of ``dtype``) as a ``torch.Tensor`` sharing its memory."""
    return _installed("tensor")(array, dtype)


def _installed(what: str) -> Callable:
    fn = _hooks.get(what)
    if fn is None:
        raise Torch2MLXError("no model analyzer is registered: import torch2mlx registers it")
    return fn
